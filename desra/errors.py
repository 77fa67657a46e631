"""User-facing error types.

Anything raised as a :class:`UserError` is a mistake in the user's input (YAML, files, checkpoints) or a
condition of the machine the user must act on (a full disk, a folder another run is using), not a bug: the
command-line entry points print its message alone, without a traceback, and exit 2. Every message names the
YAML key path or the file involved and says what was expected.
"""


class UserError(Exception):
    """Base class of errors caused by user input; printed without a traceback by the CLIs."""


class ConfigError(UserError):
    """Bad YAML option file, option value or command-line override."""


class DataError(UserError):
    """Missing, unpaired, mis-sized or unreadable data files."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not match the network."""


class TrainingDivergedError(UserError):
    """A loss became NaN or Inf; training stops and the last good checkpoint is kept."""


class OutputError(UserError):
    """An output file could not be written (disk full, read-only or unwritable folder); nothing earlier is lost."""


class FolderInUseError(UserError):
    """Another run holds the lock of the experiment, detection or report folder this run would write to."""
