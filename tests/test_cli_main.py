import errno
import logging
import random
import signal
import subprocess
import sys
import time

import click
import pytest
from click.testing import CliRunner

from nezha_cli import __version__
from nezha_cli.cli import COMMANDS, _configure_logging, cli
from nezha_cli.errors import DataError


@pytest.fixture
def failing_command():
    @click.command("boom")
    def boom():
        raise DataError("corpus.txt:3: not UTF-8; pass --encoding")

    cli.add_command(boom)
    yield
    cli.commands.pop("boom")


def test_every_option_of_every_command_is_in_the_readme():
    # README.md or a guide under docs/ names every long option of every command (subcommands of `recipes` and the
    # global options included), as a whole word: `--resume` does not count for `--resume-from`.
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = "\n".join(p.read_text(encoding="utf-8") for p in [root / "README.md", *sorted(root.glob("docs/*.md"))])

    def documented(option):
        return re.search(re.escape(option) + r"(?![\w-])", text) is not None

    def walk(command, path):
        for param in command.params:
            names = [o for o in (*param.opts, *param.secondary_opts) if o.startswith("--") and o != "--help"]
            if names and not any(documented(o) for o in names):
                yield f"{path} {names[0]}"
        if isinstance(command, click.Group):
            ctx = click.Context(command)
            for name in command.list_commands(ctx):
                yield from walk(command.get_command(ctx, name), f"{path} {name}")

    assert list(walk(cli, "nezha")) == []


def test_help_lists_the_pipeline():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "tokenize -> mask -> pretrain" in result.output
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_does_not_import_torch(command):
    # Printing help must stay instant: torch alone takes 1-3 s to import.
    argv = [command, "--help"] if command else ["--help"]
    code = ("import sys; from nezha_cli.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False", command


def test_every_registered_command_has_help():
    runner = CliRunner()
    for name in COMMANDS:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage: " in result.output
        if name in ("finetune", "evaluate"):
            assert "Tasks:" in result.output and "lcqmc" in result.output  # the list built when help is shown


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_library_error_is_one_line_and_exit_code_2(failing_command):
    result = CliRunner().invoke(cli, ["boom"])
    assert result.exit_code == 2
    assert result.output.strip() == "Error: corpus.txt:3: not UTF-8; pass --encoding"
    assert "Traceback" not in result.output


def test_debug_shows_the_exception(failing_command):
    result = CliRunner().invoke(cli, ["--debug", "boom"])
    assert result.exit_code != 0
    assert isinstance(result.exception, DataError)


@pytest.mark.parametrize("error,hint", [
    (OSError(errno.ENOSPC, "No space left on device", "out/.model.tmp-host-1-x"), "free some space"),
    (PermissionError(errno.EACCES, "Permission denied", "out/.model.tmp-host-1-x"), "check the permissions"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "out/.model.tmp-host-1-x"), "check the path"),
])
def test_operating_system_errors_are_one_line_and_exit_code_2(error, hint):
    @click.command("write")
    def write():
        raise error

    cli.add_command(write)
    try:
        result = CliRunner().invoke(cli, ["write"])
        assert result.exit_code == 2 and "Traceback" not in result.output
        # The temporary that the output is written to is named as the output.
        assert result.output.startswith(f"Error: out/model: {error.strerror}; ")
        assert hint in result.output and len(result.output.strip().splitlines()) == 1
        assert isinstance(CliRunner().invoke(cli, ["--debug", "write"]).exception, OSError)
    finally:
        cli.commands.pop("write")


def test_unknown_command_is_a_usage_error():
    result = CliRunner().invoke(cli, ["frobnicate"])
    assert result.exit_code == 2 and "No such command" in result.output


def test_console_script_entry_point():
    # `python -m nezha_cli` goes through the same main() as the installed `nezha` script.
    proc = subprocess.run([sys.executable, "-m", "nezha_cli", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and __version__ in proc.stdout


@pytest.mark.parametrize("rank,quiet,debug,level", [
    (None, False, False, logging.INFO), ("0", False, False, logging.INFO), ("1", False, False, logging.WARNING),
    ("1", False, True, logging.DEBUG), (None, True, False, logging.WARNING)])
def test_only_the_first_process_logs_progress_notes(monkeypatch, rank, quiet, debug, level):
    # Under --num-processes / accelerate launch every process runs the command: one set of INFO lines, not N.
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    _configure_logging(debug=debug, quiet=quiet)
    assert logging.getLogger("nezha_cli").level == level


def test_sigterm_cleans_up_like_ctrl_c(tmp_path):
    # timeout, docker stop and Slurm stop a job with SIGTERM: the output's temporary goes, and the exit code says it.
    rng = random.Random(0)
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join("".join(rng.choices(chars, k=60)) for _ in range(40000)) + "\n", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "nezha_cli", "-q", "tokenize", str(corpus), "-o",
                             str(tmp_path / "out"), "--num-proc", "1"], stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None and not any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir()):
            time.sleep(0.05)
        assert proc.poll() is None, "tokenize finished before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM and err.strip().startswith("Terminated. Nothing was left"), err
    assert [p.name for p in tmp_path.iterdir()] == ["corpus.txt"]


def _tokenize(tmp_path, *options):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("今天天气很好。\n我们去公园散步。\n\n明天也许会下雨。\n", encoding="utf-8")
    # A long output path: logs to a file must keep it on one line (rich would cut it at 80 columns).
    out = tmp_path / ("a-long-directory-name-" * 4) / "tokenized-output-directory"
    return subprocess.run([sys.executable, "-m", "nezha_cli", *options, "tokenize", str(corpus), "-o", str(out)],
                          capture_output=True, text=True, timeout=300), out


def test_logs_to_a_file_are_whole_lines(tmp_path):
    proc, out = _tokenize(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert any(str(out) in line and " INFO " in line for line in proc.stderr.splitlines()), proc.stderr
    assert "…" not in proc.stderr


def test_log_format_json_lines_parse(tmp_path):
    import json

    proc, out = _tokenize(tmp_path, "--log-format", "json")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines()]
    assert records and all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert any(str(out) in r["message"] for r in records)
    # An error is a JSON record too.
    again, _ = _tokenize(tmp_path, "--log-format", "json")
    assert again.returncode == 2
    error = json.loads(again.stderr.strip().splitlines()[-1])
    assert error["level"] == "ERROR" and "already exists" in error["message"]


def test_a_stopped_run_says_how_to_go_on():
    from nezha_cli.cli import stopped_message

    assert "--resume" in stopped_message(False, "pretrain") and stopped_message(True, "finetune").startswith(
        "Terminated.")
    assert "run the command again" in stopped_message(False, "tokenize")


def test_a_closed_pipe_ends_quietly():
    # `nezha recipes show tiny | head -1`: no "Error: Broken pipe".
    proc = subprocess.Popen([sys.executable, "-m", "nezha_cli", "recipes", "show", "tiny"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Error" not in err and "Traceback" not in err, err


def test_a_process_whose_peer_reported_an_error_exits_without_a_traceback(tmp_path, monkeypatch):
    # --num-processes: the main process stopped on a bad -o and left its line; the other one then fails in the
    # barrier it waits at, and its traceback (gloo's "Connection closed by peer") would say nothing more.
    from nezha_cli.engine.launch import ERROR_DIR_ENV

    @click.command("barrier")
    def barrier():
        raise RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer")

    monkeypatch.setenv(ERROR_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "1")
    cli.add_command(barrier)
    try:
        alone = CliRunner().invoke(cli, ["barrier"])
        assert isinstance(alone.exception, RuntimeError)  # a failure of its own is not hidden
        (tmp_path / "rank-0.txt").write_text("Error: out: cannot write the output directory\n")
        result = CliRunner().invoke(cli, ["barrier"])
        assert result.exit_code == 2 and result.output == ""
    finally:
        cli.commands.pop("barrier")


def test_python_api_is_the_commands_library_calls():
    import nezha_cli
    from nezha_cli.interchange import export_model
    from nezha_cli.pretraining.run import pretrain
    from nezha_cli.tasks.finetune import finetune

    assert nezha_cli.pretrain is pretrain and nezha_cli.finetune is finetune and nezha_cli.export_model is export_model
    for name in nezha_cli._API:
        assert callable(getattr(nezha_cli, name)), name
    assert not hasattr(nezha_cli, "no_such_call")
    code = "import sys, nezha_cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"
