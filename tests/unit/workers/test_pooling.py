import pytest
import torch

from workers.pooling import pool_cls, pool_last4, pool_mean, pool_pooler


def _layers(batch=2, seq=4, dim=3, n=7):
    torch.manual_seed(0)
    return tuple(torch.randn(batch, seq, dim) for _ in range(n))


def test_cls_is_position_zero_of_the_last_layer():
    layers = _layers()
    mask = torch.ones(2, 4, dtype=torch.long)
    assert torch.equal(pool_cls(layers, mask), layers[-1][:, 0])


def test_mean_ignores_padding():
    layers = _layers()
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    pooled = pool_mean(layers, mask)
    assert pooled.shape == (2, 3)
    assert torch.allclose(pooled[0], layers[-1][0, :2].mean(dim=0))
    assert torch.allclose(pooled[1], layers[-1][1].mean(dim=0))


def test_last4_sums_cls_of_the_last_four_layers():
    layers = _layers()
    expected = layers[-1][:, 0] + layers[-2][:, 0] + layers[-3][:, 0] + layers[-4][:, 0]
    assert torch.allclose(pool_last4(layers, torch.ones(2, 4)), expected)


def test_last4_needs_four_layers():
    with pytest.raises(ValueError, match="at least 4 encoder layers"):
        pool_last4(_layers(n=3), torch.ones(2, 4))


def test_pooler_requires_a_pooler_output():
    with pytest.raises(ValueError, match="needs a model with a pooler layer"):
        pool_pooler(_layers(), torch.ones(2, 4), None)
    out = torch.ones(2, 3)
    assert pool_pooler(_layers(), torch.ones(2, 4), out) is out
