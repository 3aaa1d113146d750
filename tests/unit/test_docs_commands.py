"""Every ``clstream`` command line in README.md, docs/*.md and deploy/README.md parses against the real CLI.

A command line is a line of a shell code block (```bash, ```sh, ```console or no language) whose
command is ``clstream`` (after ``VAR=value`` prefixes, a ``$`` prompt, a pipe or ``&&``), joined
with the lines it continues with a trailing backslash; or an inline code span that starts with
``clstream ``. Each is parsed, never run, by the parser the ``clstream`` entry point builds, with
flag abbreviations turned off so that a doc cannot lean on a prefix the CLI may later make
ambiguous. Code blocks hold complete commands; an inline span may leave out required arguments
(prose says "`clstream finetune --lora`" or "`clstream dlq`"), but every flag, choice and value it
shows must be real. Angle-bracket placeholders (``<topic>``) are refused: write an example value.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "deploy" / "README.md"]
SHELL_FENCES = {"", "bash", "sh", "shell", "console", "zsh"}
# Shell control operators: a command line may hold several commands (`a | clstream b && c`).
SEPARATORS = {"|", "||", "&", "&&", ";", ";;"}
REDIRECTIONS = {"<", ">", ">>", ">&", "<&", "&>", ">|", "<<", "<<<"}
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class DocCommand:
    where: str  # README.md:12
    text: str  # as written, continuation lines joined
    argv: tuple[str, ...]  # the arguments after `clstream`
    complete: bool  # a code-block line (complete) or an inline span (required arguments optional)


# -- extraction ---------------------------------------------------------------------------------


def _fenced_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, logical line) for each line of a shell code block, continuations joined."""
    fence: str | None = None
    pending: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            match = re.match(r"(`{3,}|~{3,})\s*([\w+-]*)", stripped)
            if match:
                fence = match.group(1) if match.group(2).lower() in SHELL_FENCES else "skip:" + match.group(1)
            continue
        marker = fence.removeprefix("skip:")
        if stripped.startswith(marker) and stripped.strip(marker[0]) == "":
            fence = None
            continue
        if fence.startswith("skip:"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        yield start, " ".join(pending)
        pending = []


def _inline_spans(text: str) -> Iterator[tuple[int, str]]:
    """(line number, code) for each inline code span outside code blocks that starts `clstream `."""
    outside = re.sub(r"(?ms)^\s*(`{3,}|~{3,}).*?^\s*\1\s*$", lambda m: "\n" * m.group(0).count("\n"), text)
    for match in re.finditer(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", outside, flags=re.S):
        code = " ".join(match.group(2).split())
        if code.startswith("clstream "):
            yield outside.count("\n", 0, match.start()) + 1, code


def clstream_argvs(line: str) -> Iterator[tuple[str, ...]]:
    """The arguments of each `clstream` command in a shell line (none when it runs no clstream)."""
    lexer = shlex.shlex(line.removeprefix("$ "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)  # comments (#) are dropped here
    except ValueError:  # an unclosed quote: shell text that is not a command (a heredoc's body)
        return
    command: list[str] = []
    redirected = False
    for token in [*tokens, ";"]:
        if token in SEPARATORS:
            if command and Path(command[0]).name == "clstream":
                yield tuple(command[1:])
            command = []
        elif redirected:
            redirected = False  # the redirection's target: `> out.jsonl`
        elif token in REDIRECTIONS:
            redirected = True
        elif not command and ASSIGNMENT.match(token):
            continue  # an environment prefix: `CLSTREAM_WORKERS__COUNT=4 clstream run`
        else:
            command.append(token)


def doc_commands(paths: list[Path]) -> list[DocCommand]:
    found: list[DocCommand] = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
        for complete, lines in ((True, _fenced_lines(text)), (False, _inline_spans(text))):
            for number, line in lines:
                for argv in clstream_argvs(line):
                    found.append(DocCommand(f"{name}:{number}", line, argv, complete))
    return found


# -- the real parser -------------------------------------------------------------------------------


def _entry_module() -> str:
    """The module `clstream` runs, as pyproject.toml's [project.scripts] says; it has build_parser()."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^clstream\s*=\s*"([\w.]+):\w+"', pyproject, flags=re.M)
    assert match, 'pyproject.toml has no [project.scripts] entry `clstream = "module:function"`'
    return match.group(1)


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield from _parsers(sub)


def _build(required: bool) -> argparse.ArgumentParser:
    module = importlib.import_module(_entry_module())
    parser: argparse.ArgumentParser = module.build_parser()
    for each in _parsers(parser):
        each.allow_abbrev = False
        if not required:
            for action in each._actions:
                action.required = False
    return parser


@pytest.fixture(scope="module")
def parsers() -> dict[bool, argparse.ArgumentParser]:
    """The CLI's parser, strict (code blocks) and without required arguments (inline spans)."""
    return {True: _build(required=True), False: _build(required=False)}


def parse_error(parser: argparse.ArgumentParser, argv: tuple[str, ...]) -> str | None:
    """argparse's complaint about ``argv``, or None when it parses. Parses only; runs nothing."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            parser.parse_args(list(argv))
    except SystemExit as exc:
        if exc.code not in (0, None):  # 0: --help, which printed and stopped
            return (err.getvalue().strip().splitlines() or [f"exit status {exc.code}"])[-1]
    return None


def placeholders(text: str) -> list[str]:
    """``<topic>``-style placeholders; the shell would read them as redirections, so look before lexing."""
    return re.findall(r"<[A-Za-z][^<>\s]*>", text)


def subcommands(parser: argparse.ArgumentParser) -> set[str]:
    return {
        name
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    }


# -- tests ---------------------------------------------------------------------------------------

COMMANDS = doc_commands(DOCS)


def test_the_docs_show_commands_at_all():
    # Guards the extraction: a broken regex would otherwise make every other test vacuous.
    in_readme = [c for c in COMMANDS if c.where.startswith("README.md:")]
    assert len([c for c in in_readme if c.complete]) >= 10, [c.text for c in in_readme]
    assert any(c.where.startswith("docs/") for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_doc_command_parses_against_the_cli(command: DocCommand, parsers):
    shown = placeholders(command.text)
    assert not shown, f"{command.where}: write an example value, not {shown}: {command.text}"
    error = parse_error(parsers[command.complete], command.argv)
    assert error is None, f"{command.where}: `{command.text}` does not parse: {error}"


def test_readme_shows_every_subcommand(parsers):
    shown = {c.argv[0] for c in COMMANDS if c.where.startswith("README.md:") and c.complete and c.argv}
    assert subcommands(parsers[True]) - shown == set()


def test_every_settings_variable_in_the_docs_names_a_setting():
    from schemas.settings import Settings

    def is_setting(variable: str) -> bool:  # CLSTREAM_WORKERS__COUNT -> workers.count
        section, _, name = variable.removeprefix("CLSTREAM_").lower().partition("__")
        field = Settings.model_fields.get(section)
        return field is not None and name in field.annotation.model_fields  # type: ignore[union-attr]

    named = {
        (path.relative_to(ROOT).as_posix(), match.group(0))
        for path in DOCS
        for match in re.finditer(r"CLSTREAM_[A-Z]+__[A-Z0-9_]+", path.read_text(encoding="utf-8"))
    }
    assert named, "no CLSTREAM_<SECTION>__<NAME> variable found: is the pattern still right?"
    assert sorted((where, variable) for where, variable in named if not is_setting(variable)) == []


@pytest.mark.parametrize(
    ("line", "complete", "complaint"),
    [
        ("clstream run --workers 2 --no-such-flag", True, "unrecognized arguments: --no-such-flag"),
        ("clstream run --work 2", True, "unrecognized arguments: --work"),  # no abbreviations
        ("clstream run --pooling median", True, "invalid choice: 'median'"),
        ("clstream tail --max ten tweets", True, "invalid int value: 'ten'"),
        ("clstream finetune --lora", True, "the following arguments are required: --out"),
        ("clstream dlq replay --bogus", False, "unrecognized arguments: --bogus"),
        ("clstream nosuchcommand", False, "invalid choice: 'nosuchcommand'"),
    ],
)
def test_a_command_the_cli_does_not_accept_is_caught(line, complete, complaint, parsers):
    (argv,) = list(clstream_argvs(line))
    error = parse_error(parsers[complete], argv)
    assert error is not None and complaint in error, error


def test_a_placeholder_is_caught_before_the_shell_would_take_it_for_a_redirection():
    assert placeholders("clstream tail <topic> --max 10") == ["<topic>"]
    assert placeholders("clstream produce - < tweets.jsonl > out.txt") == []


def test_extraction_handles_continuations_prefixes_pipes_and_inline_spans(tmp_path):
    doc = tmp_path / "guide.md"
    doc.write_text(
        "Run `clstream finetune --lora` or `clstream.error.class` (a header, not a command).\n\n"
        "```bash\n"
        "CLSTREAM_WORKERS__COUNT=4 clstream run --workers 2 \\\n"
        "    --delivery exactly-once &   # comment\n"
        "cat tweets.jsonl | clstream produce - --topic tweets && clstream tail tweets > out.jsonl\n"
        "make demo\n"
        "```\n\n"
        "```json\n"
        "clstream run --not-shell\n"
        "```\n",
        encoding="utf-8",
    )
    commands = [(c.argv, c.complete) for c in doc_commands([doc])]
    assert commands == [
        (("run", "--workers", "2", "--delivery", "exactly-once"), True),
        (("produce", "-", "--topic", "tweets"), True),
        (("tail", "tweets"), True),
        (("finetune", "--lora"), False),
    ]
