"""The harness's user-facing error: raised for bad input, printed as one line by the CLI (exit 2)."""


class ConfigError(ValueError):
    """Bad user input (unknown name, invalid value, missing data). The message names the fix."""


class DataError(ConfigError):
    """A data set on disk is missing, incomplete or unreadable; the message names the path and the fix."""
