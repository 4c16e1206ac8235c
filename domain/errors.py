"""Every error of Ballast's business rules, in one place.

A ``BallastError`` is *permanent*: retrying the same command cannot succeed,
so the worker dead-letters it at once with ``str(error)`` as the reason.
Anything else (database or broker unavailable, deadlock, timeout) is
*transient* and retried with backoff.
"""


class BallastError(Exception):
    """Base of the permanent errors. ``str(error)`` is the one-line reason."""

    code = "error"


class InvalidCommand(BallastError):
    """The payload is malformed: wrong types, ranges, enums or unknown fields."""

    code = "invalid"


class Refused(BallastError):
    """A business rule refused an otherwise well-formed command."""

    code = "refused"


class NotFound(Refused):
    """The command names something that does not exist."""

    code = "not_found"


class RequestConflict(Refused):
    """A ``request_id`` was reused with a different payload."""

    code = "request_conflict"


class InsufficientFunds(Refused):
    """An account that may not go negative would go negative."""

    code = "insufficient_funds"


class LedgerError(BallastError):
    """A posting violates double-entry rules (unbalanced, currency mismatch...)."""

    code = "ledger"
