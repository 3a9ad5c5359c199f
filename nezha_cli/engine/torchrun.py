"""``python -m nezha_cli.engine.torchrun ARGS``: torchrun, with a failed process reported as its exit code.

torchrun itself ends a failed run with a traceback of its own launcher; the processes have said what went wrong
(see :mod:`nezha_cli.engine.launch`). Kept apart from ``launch`` so that ``-m`` runs a module the package has not
imported yet.
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    """torchrun with a failed process reported as its exit code, not as a traceback of the launcher."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    argv = sys.argv[1:] if argv is None else argv
    if "--debug" not in argv:
        # The agent logs each failure, signal and SIGTERM to the other processes; their own lines say what happened.
        # Its loggers set their own levels, so each is quietened (they exist once torch.distributed.run is imported).
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("torch.distributed.elastic"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        return failure.exitcode if failure.exitcode and failure.exitcode > 0 else 1
    except SignalException as exc:
        # SIGTERM (or another signal) reached torchrun, which stopped the processes: 128 + the signal, as a shell
        # reports a process the signal ended.
        return 128 + int(exc.sigval)
    except KeyboardInterrupt:
        return 130  # Ctrl-C: the processes have stopped and said so; --resume continues from a checkpoint
    return 0


if __name__ == "__main__":
    sys.exit(main())
