"""The one error type users see for bad input; the CLI prints it as one line and exits 2."""


class MicroRMError(Exception):
    """Bad input: a file, a field, a setting. The message names what, where, and the fix."""


class InvalidRecord(MicroRMError):
    """A pair record that fails validation. ``problem`` names file, line and field; with ``fix_it``
    (the record itself must change) the message adds "; fix it", and a CLI command that can skip
    bad records adds how (``--skip-invalid``)."""

    def __init__(self, problem: str, fix_it: bool = False) -> None:
        super().__init__(f"{problem}; fix it" if fix_it else problem)
        self.problem = problem
        self.fix_it = fix_it
