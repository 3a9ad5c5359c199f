"""The ``nezha`` command line: parse, validate, call the library, print.

Subcommands live one per module in this package and are imported only when used, so ``nezha --help`` stays fast
(torch is never imported to print help). Library errors (:class:`nezha_cli.errors.NezhaError`) become one line on
stderr and exit code 2, and so do the operating system's refusals (``OSError``: disk full, permissions); ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import errno
import functools
import importlib
import logging
import os
import re
import signal
import sys

import click

from nezha_cli import __version__
from nezha_cli.errors import NezhaError, Terminated

# name -> "module:attribute". Order is the order of the pipeline, which is how --help lists them.
COMMANDS: dict[str, str] = {
    "tokenize": "nezha_cli.cli.tokenize:tokenize",
    "mask": "nezha_cli.cli.mask:mask",
    "pretrain": "nezha_cli.cli.pretrain:pretrain",
    "finetune": "nezha_cli.cli.finetune:finetune",
    "evaluate": "nezha_cli.cli.evaluate:evaluate",
    "export": "nezha_cli.cli.export:export",
    "report": "nezha_cli.cli.report:report",
    "import": "nezha_cli.cli.import_:import_",
    "recipes": "nezha_cli.cli.recipes:recipes",
    "corpus": "nezha_cli.cli.corpus:corpus",
}


class UserError(click.ClickException):
    """A library error shown as one line; exit code 2 like click's usage errors."""

    exit_code = 2

    def show(self, file=None) -> None:
        from nezha_cli.engine.launch import report_error

        # Under `--num-processes N` the launching command prints each process's line once.
        line = f"Error: {self.format_message()}"
        if not report_error(line):
            emit_line(line, "ERROR")


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS) + sorted(n for n in self.commands if n not in COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except NezhaError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            raise UserError(str(exc)) from None
        except KeyboardInterrupt as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            from nezha_cli.engine.launch import report_error

            line = stopped_message(isinstance(exc, Terminated), ctx.invoked_subcommand)
            if not report_error(line):
                emit_line(line, "ERROR")
            ctx.exit(128 + signal.SIGTERM if isinstance(exc, Terminated) else 130)
        except OSError as exc:
            # The system refused a read or write the checks before the work could not foresee (disk full,
            # permissions, a path that vanished): one line too, the atomic outputs leave nothing half-written.
            # A closed pipe (`nezha recipes show tiny | head -1`) is click's to handle: it exits quietly.
            if (ctx.obj and ctx.obj.get("debug")) or exc.errno == errno.EPIPE:
                raise
            raise UserError(os_error_message(exc)) from None
        except Exception:
            # Under --num-processes, a process whose peer stopped on an error fails in the barrier it waits at;
            # the peer's one line says what happened, this traceback would not.
            from nezha_cli.engine.launch import another_process_reported_error

            if not (ctx.obj and ctx.obj.get("debug")) and another_process_reported_error():
                ctx.exit(2)
            raise


# Commands whose work is checkpointed: a stopped run goes on from where it was.
TRAINING_COMMANDS = ("pretrain", "finetune")


def stopped_message(terminated: bool, command: str | None) -> str:
    """The line for a run stopped by Ctrl-C or SIGTERM: what happened and how to go on."""
    what = "Terminated" if terminated else "Interrupted"
    if command in TRAINING_COMMANDS:
        return (f"{what}. Run the same command with --resume to continue from the newest checkpoint in its output "
                "directory.")
    return f"{what}. Nothing was left half-written; run the command again to redo it."


def emit_line(message: str, level: str) -> None:
    """One line on stderr: as it is, or as a JSON record under ``--log-format json`` (the logs' own format)."""
    from nezha_cli.console import json_logs  # here, not at import: rich is not needed to print help

    if json_logs():
        record = logging.makeLogRecord({"name": "nezha_cli", "levelname": level, "msg": message})
        message = JsonLogFormatter().format(record)
    click.echo(message, err=True)


def check_resume_or_overwrite(resume: bool, overwrite: bool) -> None:
    """The training commands take one of --resume and --overwrite, not both."""
    if resume and overwrite:
        raise click.UsageError("--resume continues the run in OUT and --overwrite deletes it: give one of them")


class ShardParam(click.ParamType):
    """``--shard I/N`` (0-based) of `nezha tokenize` and `nezha mask`, as a :class:`nezha_cli.text.shards.Shard`.
    A bad value is the library's ConfigError: one ``Error: --shard ...`` line, without click's usage lines."""

    name = "I/N"

    def convert(self, value, param, ctx):
        from nezha_cli.text.shards import Shard

        return value if isinstance(value, Shard) else Shard.parse(value)


# NezhaConfig's ATTENTION_IMPLEMENTATIONS, spelled out: importing the model would import torch for --help
# (tests/test_modeling_fused_attention.py checks that the two agree).
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "fused")
ATTENTION_HELP = ("How the attention is computed: eager (relative-position buckets), sdpa (one "
                  "scaled_dot_product_attention call, sequences of at most K + 1 tokens) or fused (the Triton kernel, "
                  "CUDA GPUs); where one does not apply, eager runs.")

ACCELERATE_CONFIG_HELP = ("Run under `accelerate launch` with this accelerate config file (FSDP, DeepSpeed, several "
                          "machines; examples in examples/accelerate/); with --num-processes, that many processes.")

SHARD = ShardParam()
SHARD_HELP = ("Prepare only shard I of N (0-based, like torchrun ranks: 0/N .. N-1/N), for N machines to share the "
              "work; the N outputs together hold exactly the unsharded instances. `nezha pretrain --data` takes "
              "them all.")


def _raise_terminated(main_pid: int, signum, frame) -> None:
    if os.getpid() != main_pid:
        # A forked worker (tokenizer pools, data loaders) inherits the handler; its parent stops it with SIGTERM,
        # which should end it as before, without a traceback of its own.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated()


def os_error_message(exc: OSError) -> str:
    filename = exc.filename
    if filename:
        # The temporary an output is written to (.NAME.tmp-...) means nothing to the user: name the output.
        directory, name = os.path.split(os.fspath(filename))
        temporary = re.match(r"\.(.+)\.tmp-", name)
        if temporary:
            filename = os.path.join(directory, temporary.group(1))
    where = f"{filename}: " if filename else ""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        hint = "free some space or write elsewhere (-o/--output, --cache-dir)"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "check the permissions, or write elsewhere (-o/--output, --cache-dir)"
    else:
        hint = "check the path; --debug shows where it happened"
    return f"{where}{reason}; {hint}"


CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 110}


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="nezha")
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logging.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress display.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="json: every line on stderr is a JSON object (time, level, logger, message) and there is no "
                   "progress display, for log collectors. [default: text; NEZHA_LOG_FORMAT]")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool, log_format: str | None) -> None:
    """NEZHA from corpus to deployed model.

    \b
    The pipeline, each step reading the previous step's output directory:
      tokenize -> mask -> pretrain -> finetune -> evaluate -> export
    Run `nezha COMMAND --help` for the options of each step.

    On Linux, freed tensor memory stays in the process for reuse (glibc malloc thresholds; faster CPU steps):
    NEZHA_MALLOC_TUNING=0 turns that off. The relative attention's bucket gather and sums run as Triton kernels
    on CUDA where Triton is installed (NEZHA_TRITON=0 turns them off) and as C kernels on a Linux CPU with a C
    compiler, built once into ~/.cache/nezha-cli (NEZHA_CPU_KERNELS=0 turns them off).
    """
    from nezha_cli.cli.malloc import tune_malloc

    if log_format is not None:
        from nezha_cli.console import LOG_FORMAT_ENV

        os.environ[LOG_FORMAT_ENV] = log_format  # processes started by --num-processes inherit it
    tune_malloc()
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["quiet"] = quiet
    _configure_logging(debug=debug, quiet=quiet)


class JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        import json

        data = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname,
                "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def _configure_logging(debug: bool, quiet: bool) -> None:
    from rich.logging import RichHandler

    from nezha_cli.console import json_logs, stderr_console

    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    if not debug and int(os.environ.get("RANK", "0")) > 0:
        level = logging.WARNING  # several processes (--num-processes, accelerate launch): the first one informs
    logger = logging.getLogger("nezha_cli")
    logger.handlers.clear()
    console = stderr_console()
    if json_logs():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLogFormatter())
    elif console.is_terminal:
        handler = RichHandler(console=console, show_time=False, show_path=debug, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        # Files and pipes (cluster logs): one whole line per record, with its time, for grep and tail.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, functools.partial(_raise_terminated, os.getpid()))
    cli.main(args=argv, prog_name="nezha")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
