"""Errors a user can act on: each message says what was wrong and how to fix it."""


class UserError(ValueError):
    """Bad input or a refused action; the workspace is left as it was."""


class OperationTimeout(TimeoutError):
    """A wait ran out of time; the operation may still finish."""
