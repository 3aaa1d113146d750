"""Test doubles shipped with the package, so a loop test needs no broker, no Ray and no download.

``InMemorySource``, ``InMemorySink`` and ``InMemoryTransactionalSink`` honour the ``Source``,
``Sink`` and ``TransactionalSink`` contracts of ``workers.ports``; ``KeywordClassifier`` is a
deterministic ``Classifier``; ``save_tiny_bert`` writes a small randomly initialised BERT
(built from a config, safetensors) for delivery tests that exercise the real model code path fast.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from schemas.errors import CommitError, DeliveryError, FencedError, ProducerFencedError
from schemas.records import LABELS
from workers.ports import OutboundRecord, Partition, RawRecord


class InMemorySource:
    """Serves ``records`` (grouped by partition, in offset order) like a single-member consumer."""

    def __init__(self, records: Sequence[RawRecord]) -> None:
        self._records = sorted(records, key=lambda r: (r.topic, r.partition, r.offset))
        self.position: dict[Partition, int] = {}
        self.commits: list[dict[Partition, int]] = []
        self.closed = False
        self.paused = False
        self.pause_calls = 0
        self.revocation: tuple | None = None
        self.polls = 0
        #: Set to simulate a rebalance: the next poll calls the revocation callback first.
        self.revoke_next_poll = False
        self.commits_at_revoke: list[dict[Partition, int]] | None = None
        #: That many commits fail as if the group were rebalancing (retriable).
        self.rebalancing_commits = 0
        self.seeks: list[dict[Partition, int]] = []
        self.generation = 1

    def poll(self, timeout_ms: int, max_records: int) -> list[RawRecord]:
        self.polls += 1
        if self.revoke_next_poll and self.revocation is not None:
            self.revoke_next_poll = False
            callback, settled, timeout_s = self.revocation
            deadline = time.monotonic() + timeout_s
            while not settled() and time.monotonic() < deadline:  # the real source keeps heartbeating here
                time.sleep(0.01)
            callback(sorted(self.position), False)
            self.commits_at_revoke = list(self.commits)
        if self.paused:
            time.sleep(timeout_ms / 1000)  # like a real poll with nothing fetchable: blocks up to the timeout
            return []
        batch = [r for r in self._records if r.offset >= self.position.get((r.topic, r.partition), 0)][
            :max_records
        ]
        for r in batch:
            self.position[(r.topic, r.partition)] = r.offset + 1
        return batch

    def commit(self, next_offsets: Mapping[Partition, int]) -> None:
        if self.rebalancing_commits > 0:
            self.rebalancing_commits -= 1
            raise CommitError("injected: the group is rebalancing", retriable=True)
        self.commits.append(dict(next_offsets))

    def seek(self, offsets: Mapping[Partition, int]) -> None:
        self.position.update(offsets)
        self.seeks.append(dict(offsets))

    def group_metadata(self) -> str:
        return f"generation-{self.generation}"

    def pause_all(self) -> None:
        self.paused = True
        self.pause_calls += 1

    def resume_all(self) -> None:
        self.paused = False

    def on_revoke(self, callback, settled, timeout_s: float) -> None:
        self.revocation = (callback, settled, timeout_s)

    def committed(self) -> dict[Partition, int]:
        merged: dict[Partition, int] = {}
        for commit in self.commits:
            merged.update(commit)
        return merged

    def close(self) -> None:
        self.closed = True


class InMemorySink:
    """Keeps delivered records in ``delivered``; ``fail_next`` makes that many deliveries fail."""

    def __init__(self) -> None:
        self.delivered: list[OutboundRecord] = []
        self.fail_next = 0
        self.closed = False

    def deliver(self, records: Sequence[OutboundRecord], timeout_s: float) -> None:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise DeliveryError(f"injected failure: {len(records)} records not acknowledged")
        self.delivered.extend(records)

    def on(self, topic: str) -> list[OutboundRecord]:
        return [r for r in self.delivered if r.topic == topic]

    def close(self) -> None:
        self.closed = True


class InMemoryTransactionalSink:
    """A transactional sink: ``committed`` holds the (records, offsets) of each committed
    transaction; ``abort_next`` aborts that many (retriable), ``fence_next`` fences that many,
    ``crash_next`` raises that many ``RuntimeError`` (a bug, not a Kafka error); after
    ``zombie_after`` commits, a newer producer owns the transactional id (``ProducerFencedError``
    on every later transaction)."""

    def __init__(self) -> None:
        self.committed: list[tuple[list[OutboundRecord], dict[Partition, int], str]] = []
        self.aborted = 0
        self.abort_next = 0
        self.fence_next = 0
        self.crash_next = 0
        self.zombie_after: int | None = None
        self.closed = False

    def deliver_atomically(
        self,
        records: Sequence[OutboundRecord],
        next_offsets: Mapping[Partition, int],
        group_metadata: object,
        timeout_s: float,
    ) -> None:
        if self.zombie_after is not None and len(self.committed) >= self.zombie_after:
            self.aborted += 1
            raise ProducerFencedError("injected: a newer producer took this transactional id")
        if self.fence_next > 0:
            self.fence_next -= 1
            self.aborted += 1
            raise FencedError("injected: the group generation moved on")
        if self.abort_next > 0:
            self.abort_next -= 1
            self.aborted += 1
            raise DeliveryError("injected: transaction aborted")
        if self.crash_next > 0:
            self.crash_next -= 1
            self.aborted += 1
            raise RuntimeError("injected: an unexpected failure inside the transaction")
        self.committed.append((list(records), dict(next_offsets), str(group_metadata)))

    def on(self, topic: str) -> list[OutboundRecord]:
        return [r for records, _, _ in self.committed for r in records if r.topic == topic]

    def committed_offsets(self) -> dict[Partition, int]:
        merged: dict[Partition, int] = {}
        for _, offsets, _ in self.committed:
            merged.update(offsets)
        return merged

    def close(self) -> None:
        self.closed = True


class KeywordClassifier:
    """POSITIVE if the text says 'good', NEGATIVE if 'bad', else NEUTRAL; raises on ``poison``."""

    model_id = "keyword-test-double"
    pooling = "cls"
    labels = LABELS

    def __init__(
        self, poison: str | None = None, gate: threading.Event | None = None, delay_s: float = 0.0
    ) -> None:
        self.poison = poison
        self.calls: list[int] = []
        #: Every text classified, in call order.
        self.texts: list[str] = []
        #: When given, every call waits for it: a stalled model.
        self.gate = gate
        self.delay_s = delay_s

    def classify(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        self.texts.extend(texts)
        if self.gate is not None:
            self.gate.wait()
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.poison is not None and any(self.poison in t for t in texts):
            raise RuntimeError("simulated model failure")
        probs = np.full((len(texts), 3), 0.1, dtype=np.float32)
        for row, text in enumerate(texts):
            best = 0 if "good" in text else 1 if "bad" in text else 2
            probs[row, best] = 0.8
        return probs


def save_tiny_bert(directory: Path, hidden_size: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Write a randomly initialised BERT (safetensors) with the default encoder's tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    from workers.model import default_encoder_path

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(directory, safe_serialization=True)
    source = default_encoder_path()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).exists():
            shutil.copy(source / name, directory / name)
    return directory


def save_random_head(directory: Path, encoder_dir: Path, pooling: str = "cls", seed: int = 0) -> Path:
    """A randomly initialised head for ``encoder_dir`` (for delivery tests, not for accuracy)."""
    import torch
    from transformers import AutoConfig

    from workers.head import HeadMetadata, SoftmaxHead, save_head
    from workers.model import weights_sha256

    torch.manual_seed(seed)
    hidden = int(AutoConfig.from_pretrained(str(encoder_dir), local_files_only=True).hidden_size)
    meta = HeadMetadata(
        labels=LABELS,
        pooling=pooling,
        hidden_size=hidden,
        encoder_id=encoder_dir.name,
        encoder_sha256=weights_sha256(encoder_dir),
        trained_on={"note": "random initialisation, for delivery tests only"},
    )
    save_head(SoftmaxHead(hidden, LABELS), directory, meta)
    return directory
