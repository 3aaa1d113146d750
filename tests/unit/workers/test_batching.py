"""The token-budget planner and the classifier's use of it."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from schemas.settings import Settings
from workers.batching import (
    CPU_PASS_COST_TOKENS,
    BatchStats,
    batch_limits,
    pad_group,
    padded_cost,
    pass_cost_tokens,
    plan_batches,
)
from workers.model import BertClassifier, resolve_precision


def _tweet_like_lengths(n: int, seed: int = 0) -> list[int]:
    """Skewed like tweets: mostly 10-40 tokens, a tail up to 128."""
    rng = random.Random(seed)
    return [min(128, max(3, int(rng.lognormvariate(3.2, 0.5)))) for _ in range(n)]


@pytest.mark.parametrize("budget", [64, 500, 2048, 8192])
def test_every_group_fits_the_token_budget(budget):
    lengths = _tweet_like_lengths(1000)
    for group in plan_batches(lengths, budget):
        cost = len(group) * max(lengths[i] for i in group)
        assert cost <= budget or len(group) == 1  # only a lone text may exceed it


def test_every_index_is_planned_exactly_once():
    lengths = _tweet_like_lengths(777, seed=3)
    groups = plan_batches(lengths, 1024, max_records=50)
    flat = [i for group in groups for i in group]
    assert sorted(flat) == list(range(777))
    assert max(len(g) for g in groups) <= 50


def test_groups_are_sorted_by_length_and_ties_keep_input_order():
    lengths = [5, 3, 5, 3, 9]
    assert plan_batches(lengths, 10) == [[1, 3], [0, 2], [4]]


def test_a_text_longer_than_the_budget_is_encoded_alone():
    assert plan_batches([4, 200, 4], 100) == [[0, 2], [1]]


def test_length_bucketing_keeps_padding_small_on_a_skewed_mix():
    lengths = _tweet_like_lengths(2000, seed=1)
    real = sum(lengths)
    bucketed = padded_cost(lengths, plan_batches(lengths, 4096))
    in_arrival_order = padded_cost(lengths, [list(range(s, min(2000, s + 32))) for s in range(0, 2000, 32)])
    assert real / bucketed >= 0.90
    assert real / in_arrival_order < 0.50  # what batching by arrival order wastes


def _best_sorted_plan_cost(lengths: list[int], budget: int, cap: int, pass_cost: int) -> int:
    """Exhaustive: the least cost of any cut of the length-sorted texts into valid groups."""
    widths = sorted(lengths)
    best = None
    for mask in range(1 << (len(widths) - 1)):
        groups, start = [], 0
        for i in range(1, len(widths) + 1):
            if i == len(widths) or mask >> (i - 1) & 1:
                groups.append(widths[start:i])
                start = i
        if all(len(g) <= cap and (len(g) * g[-1] <= budget or len(g) == 1) for g in groups):
            cost = sum(len(g) * g[-1] + pass_cost for g in groups)
            best = cost if best is None else min(best, cost)
    assert best is not None
    return best


@pytest.mark.parametrize("pass_cost", [0, 13, 100])
def test_the_plan_is_the_cheapest_cut_of_the_sorted_texts(pass_cost):
    rng = random.Random(pass_cost)
    for _ in range(40):
        lengths = [rng.randint(3, 60) for _ in range(rng.randint(1, 10))]
        budget, cap = rng.choice([64, 128, 400]), rng.choice([2, 4, 64])
        groups = plan_batches(lengths, budget, cap, pass_cost)
        cost = padded_cost(lengths, groups) + pass_cost * len(groups)
        assert cost == _best_sorted_plan_cost(lengths, budget, cap, pass_cost), (lengths, budget, cap)


def _plan_by_every_start(lengths: list[int], budget: int, cap: int | None, pass_cost: int) -> list[list[int]]:
    """The dynamic programme written plainly: every start a group may have, earliest on ties."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    widths = [max(1, lengths[i]) for i in order]
    best, cut = [0] * (len(order) + 1), [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        size = max(1, min(cap or len(order), budget // widths[j - 1]))
        costs = [(best[i] + (j - i) * widths[j - 1] + pass_cost, i) for i in range(max(0, j - size), j)]
        best[j], cut[j] = min(costs)
    groups, j = [], len(order)
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def test_the_plan_is_the_one_every_start_gives_on_long_polls():
    rng = random.Random(7)
    for _ in range(300):
        low, high = rng.choice([(3, 70), (1, 5), (5, 8), (1, 300), (0, 3)])
        lengths = [rng.randint(low, high) for _ in range(rng.randint(1, 600))]
        budget, cap = rng.choice([64, 1024, 16_384]), rng.choice([None, 1, 4, 64, 256])
        pass_cost = rng.choice([0, 30, 16_384])
        expected = _plan_by_every_start(lengths, budget, cap, pass_cost)
        assert plan_batches(lengths, budget, cap, pass_cost) == expected, (budget, cap, pass_cost)


def test_a_group_is_cut_where_the_lengths_jump_when_a_pass_is_cheap():
    lengths = [10, 10, 10, 40]
    # Filling up to the budget pads three 10-token tweets to 40 (160 slots for 70 real).
    assert plan_batches(lengths, 160, pass_cost=0) == [[0, 1, 2], [3]]
    # When a pass costs more than the padding it saves, one pass it is.
    assert plan_batches(lengths, 160, pass_cost=100) == [[0, 1, 2, 3]]


def test_pass_cost_is_small_on_a_cpu_and_a_full_budget_elsewhere():
    assert pass_cost_tokens("cpu", 1024) == CPU_PASS_COST_TOKENS
    assert pass_cost_tokens("cuda", 8192) == 8192
    assert pass_cost_tokens("cuda", None) == 4096


def test_invalid_budgets_are_refused():
    with pytest.raises(ValueError, match="max_tokens must be at least 1"):
        plan_batches([1], 0)
    with pytest.raises(ValueError, match="max_records must be at least 1"):
        plan_batches([1], 10, max_records=0)
    with pytest.raises(ValueError, match="pass_cost must be at least 0"):
        plan_batches([1], 10, pass_cost=-1)


def test_pad_group_packs_ids_and_mask_right_padded():
    packed = pad_group([[101, 7, 102], [101, 102]], [1, 0], pad_id=0)
    assert packed.shape == (2, 2, 3)
    assert packed[0].tolist() == [[101, 102, 0], [101, 7, 102]]
    assert packed[1].tolist() == [[1, 1, 0], [1, 1, 1]]
    rows = [[101, 5, 6, 7, 102], [101, 102], [101, 8, 102]]
    packed = pad_group(rows, [2, 0, 1], pad_id=9)
    assert packed[0].tolist() == [[101, 8, 102, 9, 9], [101, 5, 6, 7, 102], [101, 102, 9, 9, 9]]
    assert packed[1].sum(axis=1).tolist() == [3, 5, 2]


def test_batch_stats_report_padding_efficiency():
    stats = BatchStats()
    assert stats.padding_efficiency is None
    stats.add(texts=4, batches=2, real_tokens=90, computed_tokens=100, forward_s=0.25)
    assert stats.snapshot() == {
        "texts": 4,
        "batches": 2,
        "real_tokens": 90,
        "computed_tokens": 100,
        "forward_s": 0.25,
        "padding_efficiency": 0.9,
    }


def test_token_budgeted_classification_matches_one_text_at_a_time(tiny_model):
    encoder_dir, head_dir = tiny_model
    classifier = BertClassifier.load(encoder_dir, head_dir, device="cpu", batch_size=64, max_tokens=60)
    rng = random.Random(0)
    words = [
        "good",
        "bad",
        "day",
        "rain",
        "coffee",
        "team",
        "match",
        "win",
        "lose",
        "the",
        "a",
        "of",
        "happy",
        "sad",
    ]
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 25))) for _ in range(40)]
    batched = classifier.classify(texts)
    one_by_one = np.concatenate([classifier.classify([t]) for t in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert classifier.stats.texts == 80
    assert classifier.stats.batches > 41  # the budget of 60 slots split the 40 texts into several passes
    assert 0 < classifier.stats.real_tokens <= classifier.stats.computed_tokens


def test_precision_auto_is_bf16_on_cuda_and_fp32_on_cpu():
    assert resolve_precision("auto", torch.device("cpu")) is None
    assert resolve_precision("auto", torch.device("cuda")) is torch.bfloat16
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16
    assert resolve_precision("fp32", torch.device("cuda")) is None


def test_unset_batch_limits_take_the_devices_defaults_and_set_ones_win():
    settings = Settings.load(overrides={})
    assert settings.workers.inference_batch_size is None and settings.workers.max_batch_tokens is None
    assert batch_limits("cpu", None, None) == (64, 1024)
    assert batch_limits("cuda", None, None) == (256, 16_384)
    assert batch_limits("mps", None, None) == (256, 16_384)  # an accelerator: a pass has a floor too
    assert batch_limits("cuda", 32, None) == (32, 16_384)
    assert batch_limits("cpu", None, 4096) == (64, 4096)


def test_a_token_budget_below_16_is_refused_with_its_name():
    with pytest.raises(ValidationError, match="max_batch_tokens"):
        Settings.load(overrides={"workers": {"max_batch_tokens": 8}})


def test_bf16_autocast_on_cpu_gives_nearly_the_fp32_probabilities(tiny_model):
    encoder_dir, head_dir = tiny_model
    texts = ["good day", "bad rain again", "the match is at five", "coffee"] * 4
    fp32 = BertClassifier.load(encoder_dir, head_dir, device="cpu", precision="fp32").classify(texts)
    bf16 = BertClassifier.load(encoder_dir, head_dir, device="cpu", precision="bf16").classify(texts)
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16, fp32, atol=0.05)
