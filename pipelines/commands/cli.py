"""``clstream``: the command line. Each subcommand turns flags into ``Settings`` and calls one function."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from pipelines.commands import bench, data, dlq, evaluate, finetune, soak, status, train_head, verify
from pipelines.commands.flags import add_settings_flags, settings_from_args
from schemas.errors import ClstreamError
from workers.logs import configure_logging

log = structlog.get_logger("clstream.cli")

# -- commands ---------------------------------------------------------------------------------


def cmd_broker(args: argparse.Namespace) -> int:
    from pipelines.kafka_tools.broker import LocalBroker

    broker = LocalBroker(args.port)
    if args.action == "start":
        print(f"broker running at {broker.start()} (log: {broker.log_file})")
    elif args.action == "stop":
        print("broker stopped" if broker.stop() else "no broker was running")
    else:
        running = broker.is_running()
        print(
            json.dumps(
                {
                    "bootstrap": broker.bootstrap,
                    "running": running,
                    "pid": broker.pid(),
                    "log": str(broker.log_file),
                }
            )
        )
        return 0 if running else 3
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.streaming.driver import Driver

    settings = settings_from_args(args)
    configure_logging(settings.log.level, settings.log.format)
    stop = threading.Event()
    driver = Driver(settings)
    try:
        driver.start(input_partitions=args.partitions)
        # After ray.init, which installs handlers of its own that would exit without draining.
        _stop_on_signals(stop)
        driver.run(stop)
    finally:
        log.info("draining")
        driver.drain()
    log.info("stopped cleanly")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.commands.demo import run_demo

    return run_demo(args)


def cmd_produce(args: argparse.Namespace) -> int:
    from pipelines.kafka_tools.records_io import produce_values, values_from_file

    settings = settings_from_args(args)
    configure_logging(settings.log.level, settings.log.format)
    pairs = values_from_file(
        args.file, text_column=args.text_column, id_column=args.id_column, encoding=args.encoding
    )
    sent = produce_values(settings.kafka, args.topic or settings.topics.input, pairs, limit=args.limit)
    print(f"produced {sent} records to {args.topic or settings.topics.input}")
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from pipelines.kafka_tools.records_io import read_topic

    settings = settings_from_args(args)
    configure_logging(settings.log.level, settings.log.format)
    for partition, offset, key, value, headers in read_topic(
        settings.kafka,
        args.topic,
        idle_timeout_s=args.idle_timeout,
        max_records=args.max,
        from_end=args.from_end,
    ):
        record: dict[str, Any] = {
            "partition": partition,
            "offset": offset,
            "key": _text(key),
            "value": _value(value),
        }
        if headers:
            record["headers"] = {name: _text(raw) for name, raw in headers}
        print(json.dumps(record, ensure_ascii=False), flush=True)
    return 0


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", errors="backslashreplace")


def _value(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return _text(raw)


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: Any) -> None:
        log.info("signal received, draining", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


# -- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clstream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    broker = sub.add_parser("broker", help="start, stop or check the local single-node Kafka broker")
    broker.add_argument("action", choices=["start", "stop", "status"])
    broker.add_argument("--port", type=int, default=9092)
    broker.set_defaults(func=cmd_broker)

    run = sub.add_parser("run", help="run the pipeline until SIGINT/SIGTERM, then drain and exit 0")
    add_settings_flags(run)
    run.add_argument("--partitions", type=int, default=4, help="partitions for topics this command creates")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser(
        "demo", help="start a local broker, stream real tweets through the pipeline, show results"
    )
    add_settings_flags(demo)
    demo.add_argument("--tweets", type=int, default=400, help="how many real tweets to stream")
    demo.add_argument(
        "--port", type=int, default=9092, help="local broker port (when no --bootstrap-servers)"
    )
    demo.set_defaults(func=cmd_demo)

    produce = sub.add_parser("produce", help="send a JSONL or CSV file's records to a topic")
    add_settings_flags(produce, pipeline=False)
    produce.add_argument("file", type=Path)
    produce.add_argument("--topic", help="default: the configured input topic")
    produce.add_argument("--text-column", default="text")
    produce.add_argument("--id-column", default="id")
    produce.add_argument("--encoding", default="utf-8")
    produce.add_argument("--limit", type=int)
    produce.set_defaults(func=cmd_produce)

    tail = sub.add_parser("tail", help="print a topic's records as JSON lines")
    add_settings_flags(tail, pipeline=False)
    tail.add_argument("topic")
    tail.add_argument("--max", type=int, help="stop after this many records")
    tail.add_argument(
        "--idle-timeout", type=float, default=5.0, help="stop after this many seconds with no record"
    )
    tail.add_argument("--from-end", action="store_true", help="only records produced from now on")
    tail.set_defaults(func=cmd_tail)

    train_head.register(sub)
    finetune.register(sub)
    evaluate.register(sub)
    bench.register(sub)
    status.register(sub)
    verify.register(sub)
    dlq.register(sub)
    soak.register(sub)
    data.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValidationError as exc:
        print(f"clstream: invalid settings:\n{_validation_summary(exc)}", file=sys.stderr)
        return 2
    except (ClstreamError, ValueError, FileNotFoundError) as exc:
        print(f"clstream: {exc}", file=sys.stderr)
        return 1


def _validation_summary(exc: ValidationError) -> str:
    # Without the offending input: it could be a secret.
    return "\n".join(
        f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
        for e in exc.errors(include_input=False, include_url=False)
    )


if __name__ == "__main__":
    sys.exit(main())
