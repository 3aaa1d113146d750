"""The user contract, pinned: every command's flags, the ``CLSTREAM_*`` variable names, the metric
names and labels, the output record's schema and the dead-letter header names.

``tests/unit/user_contract.json`` is the golden copy. A change to it is a change users see (a
renamed flag breaks their scripts, a renamed metric their dashboards); it is made on purpose, by
rerunning with ``CLSTREAM_WRITE_CONTRACT=1`` and saying so in the commit, never to make a
refactoring pass.
"""

from __future__ import annotations

import argparse
import json
import os
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from pipelines.streaming.driver import Driver
from pipelines.streaming.metrics import PipelineCollector
from schemas.dlq import REPLAYED_FROM, DlqHeader
from schemas.records import LabeledTweet
from schemas.settings import Settings

GOLDEN = Path(__file__).with_name("user_contract.json")


def _commands() -> dict[str, Any]:
    # Through the installed entry point, wherever the module behind it lives.
    (script,) = entry_points(group="console_scripts", name="clstream")
    main = script.load()
    parser = __import__(main.__module__, fromlist=["build_parser"]).build_parser()
    return _parser_contract(parser)


def _parser_contract(parser: argparse.ArgumentParser) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    commands: dict[str, Any] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                commands[name] = _parser_contract(sub)
        elif not isinstance(action, argparse._HelpAction):
            key = " ".join(action.option_strings) or f"<{action.dest}>"
            flags[key] = sorted(map(str, action.choices)) if action.choices else None
    return {"flags": flags, "commands": commands} if commands else {"flags": flags}


def _environment_variables() -> list[str]:
    prefix = Settings.model_config["env_prefix"]
    delimiter = Settings.model_config["env_nested_delimiter"]
    names = []
    for section, field in Settings.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            names += [f"{prefix}{section}{delimiter}{name}".upper() for name in model.model_fields]
        else:
            names.append(f"{prefix}{section}".upper())
    return sorted(names)


def _metrics() -> dict[str, Any]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(Driver(Settings.load(overrides={"metrics": {"port": 0}}))))
    # An idle driver exports every family, some without samples: the label names are read from
    # the families themselves.
    return {
        family.name: {"type": family.type, "labels": list(family._labelnames)}
        for family in registry.collect()
    }


def contract() -> dict[str, Any]:
    return {
        "commands": _commands(),
        "environment": _environment_variables(),
        "metrics": _metrics(),
        "output_record": LabeledTweet.model_json_schema(),
        "dlq_headers": sorted([h.value for h in DlqHeader] + [REPLAYED_FROM]),
    }


def test_the_user_contract_is_the_golden_copy():
    now = json.loads(json.dumps(contract()))
    if os.environ.get("CLSTREAM_WRITE_CONTRACT") == "1":
        GOLDEN.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    for part in golden:
        assert now[part] == golden[part], f"the user contract changed: {part}"
    assert set(now) == set(golden)


def test_the_contract_covers_what_users_touch():
    golden = json.loads(GOLDEN.read_text())
    assert {"run", "demo", "verify", "bench", "eval", "soak", "dlq"} <= set(golden["commands"]["commands"])
    assert "CLSTREAM_KAFKA__BOOTSTRAP_SERVERS" in golden["environment"]
    assert golden["metrics"]["clstream_consumer_lag"] == {"type": "gauge", "labels": ["partition"]}
    assert "clstream.error.class" in golden["dlq_headers"]
    assert "label" in golden["output_record"]["properties"]
