"""The commands shown in README.md and docs/*.md parse with the CLI as it is, so the documentation cannot go stale.

Every `nezha ...` line of a fenced code block is split like a shell would (comments dropped, `\\` continuations
joined, pipelines and `&&` split into their commands) and parsed by the command it names with
``make_context(..., resilient_parsing=False)``: an unknown option, a missing value or a value outside a Choice fails.
Nothing runs. Paths are not checked for existence (the examples name the user's files), so each command is parsed
with copies of its parameters whose path types accept any path. `accelerate launch ... -m nezha_cli` and
`torchrun ... -m nezha_cli` wrappers are parsed from the part after `-m nezha_cli`. `make` targets must exist.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import click
import pytest

from nezha_cli.cli import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
OPERATORS = {"|", "||", "&&", ";", "&"}


def code_lines(path: Path) -> list[str]:
    """The logical lines of a file's fenced code blocks, continuations joined."""
    lines: list[str] = []
    for block in FENCE.findall(path.read_text(encoding="utf-8")):
        pending = ""
        for raw in block.splitlines():
            if raw.rstrip().endswith("\\"):
                pending += raw.rstrip()[:-1] + " "
                continue
            lines.append(pending + raw)
            pending = ""
        if pending:
            lines.append(pending)
    return lines


def shell_commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line, as argument lists (command substitutions left out)."""
    line = re.sub(r"\$\([^)]*\)", " ", line)  # e.g. $(for i in ...; do echo --train-file x; done)
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:  # not shell (Python, YAML, output shown in a block)
        return []
    commands, current = [], []
    for token in tokens:
        if token in OPERATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    return [c for c in commands if c]


def nezha_args(argv: list[str]) -> list[str] | None:
    """The arguments after `nezha` (or after `-m nezha_cli` of a launcher), or None for other commands."""
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):  # VAR=value nezha ...
        argv = argv[1:]
    if not argv:
        return None
    if Path(argv[0]).name == "nezha":
        return argv[1:]
    if "-m" in argv:
        i = argv.index("-m")
        if i + 1 < len(argv) and argv[i + 1] == "nezha_cli":
            return argv[i + 2:]
    return None


def lenient(command: click.Command) -> click.Command:
    """A copy of COMMAND whose path parameters accept paths that do not exist."""
    command = copy.copy(command)
    params = []
    for param in command.params:
        param = copy.copy(param)
        if isinstance(param.type, click.Path):
            param.type = click.Path(path_type=param.type.type)
        elif isinstance(param.type, click.File):
            param.type = click.STRING
        params.append(param)
    command.params = params
    return command


def check_values(command: click.Command, ctx: click.Context) -> None:
    """Values that the command checks itself, after parsing: choices written as a metavar (`[hf|onnx]`, `int8`,
    kept as strings so that --help needs no import) and task names."""
    for param in command.params:
        value = ctx.params.get(param.name)
        if value is None or not isinstance(param.type, click.types.StringParamType):
            continue
        metavar = param.metavar or ""
        if metavar == "TASK" or param.name in {"task", "task_name"}:
            from nezha_cli.tasks import get_task

            try:
                get_task(value)
            except Exception as exc:
                raise click.BadParameter(f"unknown task {value!r}", ctx=ctx, param=param) from exc
        elif re.fullmatch(r"\[?[\w-]+(\|[\w-]+)*\]?", metavar) and metavar.lower() == metavar:
            choices = metavar.strip("[]").split("|")
            if value not in choices:
                raise click.BadParameter(f"{value!r} is not one of {choices}", ctx=ctx, param=param)


def parse(args: list[str]) -> None:
    """Parse ARGS as `nezha ARGS` would, down to the leaf command, without running anything."""
    group: click.Command = cli
    name = "nezha"
    parent = None
    while True:
        ctx = lenient(group).make_context(name, list(args), parent=parent, resilient_parsing=False)
        check_values(group, ctx)
        if not isinstance(group, click.Group):
            return
        rest = [*ctx._protected_args, *ctx.args] if hasattr(ctx, "_protected_args") else [*ctx.protected_args,
                                                                                          *ctx.args]
        if not rest:
            return  # `nezha --help`-like lines
        sub_name, sub, args = group.resolve_command(ctx, rest)
        assert sub is not None, f"no command {rest[0]!r}"
        group, name, parent = sub, sub_name, ctx


def documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in DOCS:
        for line in code_lines(path):
            for argv in shell_commands(line):
                args = nezha_args(argv)
                if args is not None and not ({"-h", "--help", "--version", "-V"} & set(args)):
                    found.append((f"{path.relative_to(ROOT)}: {shlex.join(argv)}", args))
    return found


COMMANDS = documented_commands()


def test_the_readme_shows_commands():
    readme = [c for c, _ in COMMANDS if c.startswith("README.md")]
    assert len(readme) >= 10
    for step in ("tokenize", "mask", "pretrain", "finetune", "evaluate", "export", "report"):
        assert any(f"nezha {step}" in c for c in readme), step


@pytest.mark.parametrize("args", [a for _, a in COMMANDS], ids=[c for c, _ in COMMANDS])
def test_documented_command_parses(args):
    parse(args)


@pytest.mark.parametrize("args", [
    ["finetune", "--task", "pd-ner", "--model", "m", "-o", "out", "--no-such-option"],
    ["export", "--model", "m", "-o", "out", "--format", "tflite"],
    ["export", "--model", "m", "-o", "out", "--format", "onnx", "--quantize", "int4"],
    ["finetune", "--task", "no-such-task", "--model", "m", "-o", "out"],
    ["evaluate", "no-such-task", "--model", "m"],
    ["pretrain", "--mixed-precision", "fp8"],
    ["recipes", "copy", "tiny"],
    ["no-such-command"],
])
def test_a_wrong_command_fails(args):
    with pytest.raises(click.UsageError):
        parse(args)


def test_a_line_is_split_like_a_shell_would():
    line = "nezha corpus default -o - | nezha tokenize - -o data/t  # comment"
    assert shell_commands(line) == [["nezha", "corpus", "default", "-o", "-"], ["nezha", "tokenize", "-", "-o",
                                                                                  "data/t"]]
    assert nezha_args(["accelerate", "launch", "--config_file", "c.yaml", "-m", "nezha_cli", "pretrain"]) == [
        "pretrain"]
    assert nezha_args(["python", "benchmarks/bench_pretrain.py"]) is None


def test_make_targets_named_in_the_docs_exist():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([A-Za-z][\w.-]*):", makefile, re.M))
    named = set()
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        named |= set(re.findall(r"`make ([\w.-]+)", text))
        for line in code_lines(path):
            for argv in shell_commands(line):
                if argv[0] == "make":
                    named |= {a for a in argv[1:] if not a.startswith("-") and "=" not in a}
    assert named, "the README names `make demo` and `make test`"
    assert named <= targets, named - targets
