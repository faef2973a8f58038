"""The one exception type that reaches users as a single line (the CLI prints it, exits 2)."""


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and how to fix it."""

    exit_code = 2


class CheckFailed(Exception):
    """An artifact or a run did not meet its limits (validate's exit 1)."""

    exit_code = 1
