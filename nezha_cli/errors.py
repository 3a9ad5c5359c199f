"""Exceptions the library raises for problems a user can fix.

The CLI turns any :class:`NezhaError` into one line on stderr and exit code 2; everything else is a bug and keeps
its traceback. Messages name the file or field at fault and say what to do.
"""


class NezhaError(Exception):
    """Base class for user-facing errors."""


class ConfigError(NezhaError, ValueError):
    """An invalid model configuration, recipe or option."""


class CheckpointError(NezhaError):
    """A model directory or checkpoint that cannot be read or does not fit the model."""


class ModelFileNotFoundError(CheckpointError, ConfigError, FileNotFoundError):
    """A model directory, ``config.json`` or weights file that is not there (an ``OSError``, as in transformers)."""


class OutputWriteError(NezhaError):
    """An output that could not be written (full disk, quota, read-only file system); nothing half-written is left."""


class DataError(NezhaError):
    """Input data that is missing, malformed or inconsistent."""


class OutputExistsError(NezhaError):
    """An output path exists and --overwrite was not given."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, docker stop, Slurm), raised where the program is, so that it cleans up as on Ctrl-C."""
