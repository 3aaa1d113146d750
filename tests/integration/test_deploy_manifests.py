"""deploy/ is checked against the real schemas and the real CLI, without a Kubernetes cluster.

- KubeRay manifests decode strictly into KubeRay's own Go types (``tests/deploy/kuberay``), Strimzi
  manifests into Strimzi's own Java model (``tests/deploy/strimzi``): an unknown or misspelt field
  fails, where ``kubectl apply`` might drop it silently.
- The image's command and the RayJob's entrypoint parse against the ``clstream`` parser; the
  dashboard's queries name only metrics the driver exports (tests/unit/user_contract.json); the
  topics and ACLs match the default settings; the Dockerfile's install gives a working ``clstream``.

Go fetches its modules from the Go module proxy and Maven its jars from Maven Central on the first
run; later runs use their caches.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.unit.test_docs_commands import ROOT, _build, clstream_argvs, parse_error

DEPLOY = ROOT / "deploy"
CHECKS = ROOT / "tests" / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
CONTRACT = json.loads((ROOT / "tests" / "unit" / "user_contract.json").read_text(encoding="utf-8"))
KUBERAY = sorted((DEPLOY / "kuberay").glob("*.yaml"))
STRIMZI = sorted((DEPLOY / "strimzi").glob("*.yaml"))
#: Every check is a subprocess with a deadline: a cold cache downloads, a warm one takes seconds.
CHECK_TIMEOUT_S = 600


def _needs(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:  # present on every machine `make test` runs on: a missing one is a set-up error
        pytest.fail(f"{' and '.join(missing)} not on PATH: the deploy/ schema checks need them")


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S, check=False
    )
    assert result.returncode == 0, f"{shlex.join(argv)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


# -- schemas -------------------------------------------------------------------------------------


def test_kuberay_manifests_decode_strictly_into_kuberays_go_types():
    _needs("go")
    env = {
        **os.environ,
        # go.sum is committed: a missing or changed checksum is an error, never an edit.
        "GOFLAGS": " ".join(filter(None, [os.environ.get("GOFLAGS", ""), "-mod=readonly"])),
        # The go line of go.mod (1.24) is met by any newer go: never download a toolchain.
        "GOTOOLCHAIN": "local",
    }
    result = _run(["go", "run", ".", *map(str, KUBERAY)], CHECKS / "kuberay", env)
    assert result.stdout.count("\nok ") + result.stdout.startswith("ok ") == len(KUBERAY), result.stdout


def test_strimzi_manifests_decode_strictly_into_strimzis_java_model(tmp_path):
    _needs("mvn", "java")
    classpath = tmp_path / "classpath.txt"
    _run(
        ["mvn", "-q", "-B", "dependency:build-classpath", f"-Dmdep.outputFile={classpath}"],
        CHECKS / "strimzi",
    )
    result = _run(
        ["java", "-cp", classpath.read_text().strip(), "StrimziCheck.java", *map(str, STRIMZI)],
        CHECKS / "strimzi",
    )
    resources = sum(len(_documents(path)) for path in STRIMZI)
    assert result.stdout.count("ok ") == resources, result.stdout


# -- the image -----------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.partition(" ") for line in lines if line and not line.startswith("#"))
    ]


def test_dockerfile_bases_are_pinned_by_digest():
    instructions = _dockerfile_instructions()
    args = dict(rest.partition("=")[::2] for word, rest in instructions if word == "ARG" and "=" in rest)
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
        for word, rest in instructions
        if word == "FROM"
    ]
    # The CPU variant's base is named in the build command of the header comment.
    bases += re.findall(r"BASE=(\S+)", DOCKERFILE.read_text(encoding="utf-8"))
    assert bases
    for base in bases:
        assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", base), (
            f"{base} is not image:tag@sha256:..."
        )


def test_image_command_and_rayjob_entrypoint_are_clstream_commands():
    instructions = dict(_dockerfile_instructions())
    image_argv = json.loads(instructions["ENTRYPOINT"]) + json.loads(instructions["CMD"])
    assert image_argv[0] == "clstream", image_argv
    assert "HF_HUB_OFFLINE=1" in instructions["ENV"]
    assert instructions["USER"] not in ("root", "0")

    (job,) = [doc for path in KUBERAY for doc in _documents(path) if doc["kind"] == "RayJob"]
    (entrypoint,) = list(clstream_argvs(job["spec"]["entrypoint"]))
    parser = _build(required=True)
    for argv in (tuple(image_argv[1:]), entrypoint):
        assert parse_error(parser, argv) is None, f"clstream {shlex.join(argv)}: {parse_error(parser, argv)}"
    assert entrypoint[0] == "run"


def test_dockerfile_install_gives_a_working_clstream(tmp_path):
    """Installs as the Dockerfile does: its COPY lines into a source tree, then not editable, with
    the Ray extra it names, from uv's cache by hard links (the versions this venv has)."""
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if not Path(uv).exists():
        pytest.fail("uv not found on PATH or beside this Python (make venv installs it)")
    instructions = _dockerfile_instructions()
    args = dict(rest.partition("=")[::2] for word, rest in instructions if word == "ARG" and "=" in rest)
    source = tmp_path / "src"
    for word, rest in instructions:
        if word == "COPY":
            *paths, target = rest.split()
            for path in paths:
                destination = source / Path(target).relative_to("/src")
                if (ROOT / path).is_dir():
                    shutil.copytree(ROOT / path, destination, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    destination.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / path, destination / path)
    (install,) = [rest for word, rest in instructions if word == "RUN" and "pip install" in rest]
    extra = re.search(r'"(ray\[default\]==)\$\{RAY_VERSION\}"', install)
    assert extra, install
    constraints = tmp_path / "constraints.txt"
    frozen = _run([uv, "pip", "freeze", "--python", sys.executable], ROOT).stdout
    constraints.write_text(
        "\n".join(line for line in frozen.splitlines() if "==" in line and not line.startswith("clstream"))
    )
    venv = tmp_path / "venv"
    started = time.monotonic()
    _run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], ROOT)
    _run(
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--link-mode=hardlink",
            "--python",
            str(venv / "bin" / "python"),
            "--constraint",
            str(constraints),
            str(source),
            extra.group(1) + args["RAY_VERSION"],
        ],
        ROOT,
    )
    installed = time.monotonic() - started
    result = _run([str(venv / "bin" / "clstream"), "--help"], tmp_path, {**os.environ, "HF_HUB_OFFLINE": "1"})
    assert "usage: clstream" in result.stdout
    print(f"the Dockerfile's install took {installed:.1f} s")


# -- names shared with the code --------------------------------------------------------------------


def _families() -> dict[str, tuple[str, ...]]:
    """Every sample name the driver exports -> its labels (a counter's _total, a histogram's _bucket...)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    names: dict[str, tuple[str, ...]] = {}
    for family, spec in CONTRACT["metrics"].items():
        for suffix in suffixes[spec["type"]]:
            names[family + suffix] = tuple(spec["labels"]) + (("le",) if suffix == "_bucket" else ())
    return names


def test_dashboard_queries_name_only_metrics_and_labels_the_driver_exports():
    dashboard = json.loads((DEPLOY / "monitoring" / "grafana-dashboard.json").read_text(encoding="utf-8"))
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    exported = _families()
    used = set()
    for expr in exprs:
        names = re.findall(r"\bclstream_\w+", expr)
        assert names, f"no clstream metric in {expr!r}"
        for name in names:
            assert name in exported, f"{name} (in {expr!r}) is not exported; see docs/metrics.md"
            used.add(name)
        labels = {
            label.strip() for group in re.findall(r"\bby \(([^)]*)\)", expr) for label in group.split(",")
        }
        assert labels <= {label for name in names for label in exported[name]}, f"{labels} in {expr!r}"
    # The panels the deployment guide promises.
    for family in (
        "clstream_consumer_lag",
        "clstream_records_dead_lettered_total",
        "clstream_inflight_tokens",
        "clstream_partitions_paused",
        "clstream_end_to_end_latency_seconds_bucket",
        "clstream_actors",
        "clstream_scaling_decisions_total",
        "clstream_stalls_total",
    ):
        assert family in used


def test_topics_and_acls_match_the_default_settings():
    from schemas.settings import Settings
    from workers.actor import transactional_id

    topics = Settings.load().topics
    declared = {
        doc["spec"].get("topicName", doc["metadata"]["name"])
        for doc in _documents(DEPLOY / "strimzi" / "topics.yaml")
    }
    assert declared == {topics.input, topics.output, topics.dlq}

    (pipeline,) = [
        doc for doc in _documents(DEPLOY / "strimzi" / "user.yaml") if doc["metadata"]["name"] == "clstream"
    ]
    allowed = {
        (acl["resource"]["type"], acl["resource"]["name"], acl["resource"].get("patternType", "literal"), op)
        for acl in pipeline["spec"]["authorization"]["acls"]
        for op in acl["operations"]
    }
    assert {
        ("topic", topics.input, "literal", "Read"),
        ("topic", topics.output, "literal", "Write"),
        ("topic", topics.dlq, "literal", "Write"),
        ("group", topics.group_id, "literal", "Read"),
    } <= allowed
    prefixes = [
        name
        for kind, name, pattern, op in allowed
        if kind == "transactionalId" and pattern == "prefix" and op == "Write"
    ]
    assert any(transactional_id(topics.group_id, "clstream-0", 3).startswith(prefix) for prefix in prefixes)


def test_every_clstream_variable_in_deploy_names_a_setting():
    named = {
        (path.relative_to(ROOT).as_posix(), variable)
        for path in DEPLOY.rglob("*")
        if path.is_file() and path.suffix in {".yaml", ".md", ""}
        for variable in re.findall(r"CLSTREAM_[A-Z]+__[A-Z0-9_]+", path.read_text(encoding="utf-8"))
    }
    assert named
    assert (
        sorted((where, variable) for where, variable in named if variable not in CONTRACT["environment"])
        == []
    )
