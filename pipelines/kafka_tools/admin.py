"""Broker-side views the driver needs (topic creation, the consumer group's lag) and the clean-up
of a run's topics and groups."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka import errors as kafka_errors
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from schemas.errors import BrokerError
from schemas.settings import KafkaSettings

#: A reachable broker bootstraps in milliseconds; past this, say why instead of waiting longer.
_PREFLIGHT_TIMEOUT_MS = 10_000


def admin_client(kafka: KafkaSettings) -> KafkaAdminClient:
    """An admin client, or a ``BrokerError`` that says whether the broker refused our credentials.

    kafka-python retries a failed SASL handshake until its bootstrap timeout and then reports only
    "Unable to bootstrap"; the reason is in its log. This watches that log while connecting, so a
    wrong password fails within min(``kafka.request_timeout_ms``, 10 s) with a message naming
    authentication. It is also the preflight of every command that talks to Kafka
    (``ensure_topics``, so ``clstream run``; ``clstream verify``).
    """
    servers = ",".join(kafka.bootstrap_servers)
    spy = _BootstrapSpy()
    kafka_logger = logging.getLogger("kafka")
    kafka_logger.addHandler(spy)
    try:
        return KafkaAdminClient(
            **kafka.client_config(),
            bootstrap_timeout_ms=min(kafka.request_timeout_ms, _PREFLIGHT_TIMEOUT_MS),
        )
    except KafkaError as exc:
        sasl = kafka.security_protocol.startswith("SASL_")
        if spy.auth_failure is not None or (sasl and spy.dropped and not spy.refused):
            # The broker closes the connection after refusing credentials; kafka-python sometimes
            # sees the close before the refusal, so a SASL connection dropped mid-handshake counts.
            why = spy.auth_failure or "the broker closed the connection during the SASL handshake"
            raise BrokerError(
                f"authentication failed at {servers} as {kafka.sasl_username!r} ({kafka.sasl_mechanism}): "
                f"{why}; check kafka.sasl_username and kafka.sasl_password"
            ) from exc
        raise BrokerError(f"cannot reach Kafka at {servers}: {type(exc).__name__}: {exc}") from exc
    finally:
        kafka_logger.removeHandler(spy)


class _BootstrapSpy(logging.Handler):
    """Remembers why kafka-python's bootstrap attempts failed (it logs the reason, then retries)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.auth_failure: str | None = None
        self.dropped = 0
        self.refused = 0

    def emit(self, record: logging.LogRecord) -> None:
        # Text, not args: the redacting log-record factory (workers.logs) has formatted them already.
        message = record.getMessage()
        for marker in ("SaslAuthenticationFailedError", "AuthorizationFailedError"):
            if marker in message and self.auth_failure is None:
                # The broker's own words ("... invalid credentials with SASL mechanism
                # SCRAM-SHA-512"), never our password.
                self.auth_failure = message[message.index(marker) :][:300]
        if message.startswith("Bootstrap connection to"):
            # "socket disconnected": the broker accepted, then hung up; anything else
            # (ECONNREFUSED, timeouts) means there was no conversation at all.
            if "socket disconnected" in message:
                self.dropped += 1
            else:
                self.refused += 1


def ensure_topics(kafka: KafkaSettings, topics: dict[str, int], timeout_s: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet (name -> partitions). Returns the ones created.

    Their replication factor is the cluster's ``default.replication.factor`` (CreateTopics v4+,
    KIP-464, brokers >= 2.4): on a replicated cluster ``acks=all`` then waits for every in-sync
    copy, as its operator intends, where a factor of 1 would keep one copy whatever ``acks`` says.
    """
    admin = admin_client(kafka)
    try:
        existing = set(admin.list_topics())
        # No replication_factor: kafka-python sends -1, which asks for the broker's default.
        missing = {
            name: {"num_partitions": partitions}
            for name, partitions in topics.items()
            if name not in existing
        }
        if missing:
            # Created concurrently by another driver is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing, timeout_ms=int(timeout_s * 1000))
            # Awaited here, with this call's timeout: ``wait_for_metadata=True`` waits a fixed 10 s,
            # which a busy 2-core machine has overrun (a CI run's topic "not ready after 10000ms").
            admin.wait_for_topics(list(missing), timeout_ms=int(timeout_s * 1000))
        return list(missing)
    finally:
        admin.close()


@dataclass(frozen=True)
class GroupLag:
    """Committed position of the group against the log end, per partition of the input topic."""

    end: dict[int, int] = field(default_factory=dict)
    committed: dict[int, int] = field(default_factory=dict)

    @property
    def by_partition(self) -> dict[int, int]:
        return {p: max(0, end - self.committed.get(p, 0)) for p, end in self.end.items()}

    @property
    def total(self) -> int:
        return sum(self.by_partition.values())

    @property
    def total_end(self) -> int:
        return sum(self.end.values())

    @property
    def total_committed(self) -> int:
        return sum(self.committed.values())


class LagProbe:
    """Reads log-end offsets and the group's committed offsets. Owns two clients; ``close`` them."""

    def __init__(self, kafka: KafkaSettings, topic: str, group_id: str) -> None:
        self.topic = topic
        self.group_id = group_id
        self._kafka = kafka
        self._admin: KafkaAdminClient | None = admin_client(kafka)
        self._offsets = KafkaConsumer(**kafka.client_config(), group_id=None, enable_auto_commit=False)

    def measure(self) -> GroupLag:
        """The lag now, or a ``KafkaError`` saying why not (the next call asks afresh)."""
        partitions = self._offsets.partitions_for_topic(self.topic) or set()
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        if not tps:
            return GroupLag()
        end = self._offsets.end_offsets(tps)
        begin = self._offsets.beginning_offsets(tps)
        committed = self._committed(tps)
        return GroupLag(
            end={tp.partition: off for tp, off in end.items()},
            # No commit yet means the group starts at the log start (auto_offset_reset=earliest).
            committed={
                tp.partition: (
                    committed[tp].offset if tp in committed and committed[tp].offset >= 0 else begin[tp]
                )
                for tp in tps
            },
        )

    def _committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, OffsetAndMetadata]:
        if self._admin is None:
            self._admin = KafkaAdminClient(**self._kafka.client_config())
        try:
            return self._admin.list_group_offsets({self.group_id: tps}).get(self.group_id, {})
        except KafkaError:
            # kafka-python 3.0.12's admin client looks a group's coordinator up once and never
            # forgets it: after that broker dies, every call goes to it (NodeNotReadyError) or to
            # a broker that no longer coordinates the group. A new client looks it up again.
            self._admin.close()
            self._admin = None
            raise

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
        self._offsets.close()


@dataclass(frozen=True)
class Removed:
    """What ``remove_run`` deleted, and what it could not (one line each, the broker's reason)."""

    topics: int = 0
    groups: int = 0
    problems: list[str] = field(default_factory=list)


def remove_run(kafka: KafkaSettings, name: str, timeout_s: float = 30.0) -> Removed:
    """Delete the topics and consumer groups one run made (a benchmark, a soak, a stage timing):
    those named ``name``, or ``name`` followed by ``.`` or ``-`` (``run_topics``' names, and
    ``bench-<run>-eo`` beside ``bench-<run>``). Never raises: a run's results do not depend on
    its clean-up. A group with members left is not deleted (the broker refuses it)."""

    def ours(other: str) -> bool:
        return other == name or other.startswith((f"{name}.", f"{name}-"))

    problems: list[str] = []
    deleted_topics = deleted_groups = 0
    try:
        admin = admin_client(kafka)
    except Exception as exc:  # noqa: BLE001 - what is left is reported, never raised
        return Removed(
            problems=[str(exc) if isinstance(exc, BrokerError) else f"{type(exc).__name__}: {exc}"]
        )
    try:
        # Topics and groups apart: a failure with the topics still lets the groups go.
        try:
            topics = sorted(t for t in admin.list_topics() if ours(t))
            if topics:
                response = admin.delete_topics(topics, timeout_ms=int(timeout_s * 1000), raise_errors=False)
                for topic in response.get("topics", []):
                    code = topic.get("error_code", 0)
                    if code:
                        # DeleteTopics before v5 (Kafka < 2.4) carries no message: name the code.
                        why = topic.get("error_message") or kafka_errors.for_code(code).__name__
                        problems.append(f"topic {topic.get('name')}: {why}")
                    else:
                        deleted_topics += 1
        except Exception as exc:  # noqa: BLE001 - what is left is reported, never raised
            problems.append(f"topics: {type(exc).__name__}: {exc}")
        try:
            groups = sorted(g["group_id"] for g in admin.list_groups() if ours(g["group_id"]))
            for group, error in (admin.delete_groups(groups) if groups else {}).items():
                if error in (None, "OK"):
                    deleted_groups += 1
                else:
                    problems.append(f"group {group}: {error}")
        except Exception as exc:  # noqa: BLE001 - what is left is reported, never raised
            problems.append(f"groups: {type(exc).__name__}: {exc}")
    finally:
        admin.close()
    return Removed(deleted_topics, deleted_groups, problems)


def run_topics(prefix: str, run_id: str) -> dict[str, str]:
    """Settings overrides giving one run (a demo, a benchmark, a soak) topics and a group of its
    own: ``<prefix>-<run_id>.tweets``, ``.labeled``, ``.dlq`` and group ``<prefix>-<run_id>``."""
    name = f"{prefix}-{run_id}"
    return {
        "topics__input": f"{name}.tweets",
        "topics__output": f"{name}.labeled",
        "topics__dlq": f"{name}.dlq",
        "topics__group_id": name,
    }
