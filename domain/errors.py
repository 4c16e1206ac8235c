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


class Unauthorized(BallastError):
    """Who sent a command may not send it: unsigned, bad signature, unknown or revoked key,
    too old, a role that may not send the actor, or an identity that is not the signer.

    ``rule`` names the rule that refused it; ``str(error)`` never contains key material.
    """

    code = "unauthorized"

    def __init__(self, rule: str, detail: str, producer: str | None = None) -> None:
        self.rule = rule
        self.producer = producer
        super().__init__(f"unauthorized by rule {rule}: {detail}")
