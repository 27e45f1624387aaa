"""The one error type users see for bad input; the CLI prints it as one line and exits 2."""


class MicroRMError(Exception):
    """Bad input: a file, a field, a setting. The message names what, where, and the fix."""


class InvalidRecord(MicroRMError):
    """A pair record that fails validation (the message names file, line and field)."""
