"""The harness's user-facing error: raised for bad input, printed as one line by the CLI (exit 2)."""

import re


class ConfigError(ValueError):
    """Bad user input (unknown name, invalid value, missing data). The message names the fix."""


class DataError(ConfigError):
    """A data set on disk is missing, incomplete or unreadable; the message names the path and the fix."""


class StorageError(ConfigError):
    """A result, checkpoint or report could not be written for want of space (disk full, quota); the
    message names the folder. What was there before stays as it was (writes are atomic)."""


def one_line(err: Exception) -> str:
    """The message of a ``ConfigError``, also when a DataLoader worker re-raised it with its
    traceback in the text (the original message is then the last line, after the class name)."""
    last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return re.sub(r"^[\w.]+(Error|Exception): ", "", last)
