"""The local broker's pure parts, without starting a JVM."""

from __future__ import annotations

import base64
import uuid

import pytest

from pipelines import broker


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0xf8 = 0b111110_00: the first base64 digit is 62, '-' in the URL-safe alphabet.
    dashed = uuid.UUID(bytes=bytes([0xF8]) + bytes(15), version=4)
    draws = iter([dashed, dashed, uuid.UUID(int=7 << 64, version=4)])
    monkeypatch.setattr(broker.uuid, "uuid4", lambda: next(draws))

    cluster_id = broker._cluster_id()

    assert not cluster_id.startswith("-"), cluster_id
    assert len(cluster_id) == 22
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
