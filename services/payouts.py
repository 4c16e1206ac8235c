"""Escrow payouts, one mechanism: how a market's settlement and a challenge's pay out.

    settle_market     -> payouts.pay_out(uow, pay, record_failure, claim=True)
    settle_challenge  -> payouts.pay_out(uow, pay, record_failure)

A payout is **one database transaction**: what the escrow holds is checked
(``check_escrow``), the lines are paid batch by batch — each batch one balanced ledger
transaction, so no statement grows with the whole escrow —, the escrow is checked empty,
the entity is marked settled, and only then is anything committed.  A crash before the
commit leaves nothing behind (nothing paid, nothing half-marked); after it the entity is
settled and a redelivery finds nothing to do.  Nobody is paid twice either way, and no
state between "nothing paid" and "all paid" is ever visible.

A failure for good — a refusal, or a transient failure on its last attempt
(``infra.attempts.final_attempt``) — is recorded by the capability's ``record_failure`` in
a transaction of its own (the entity ``settlement_failed`` / ``failed``, a critical
alert) before the message is dead-lettered; the operator's retry hands a new settlement on.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from dramatiq.middleware import TimeLimitExceeded

from domain.errors import BallastError, LedgerError
from infra.attempts import final_attempt
from infra.logs import get_logger
from infra.uow import UnitOfWork

log = get_logger(__name__)

T = TypeVar("T")


def pay_out(uow: UnitOfWork, pay: Callable[[], T],
            record_failure: Callable[[str], object], *, claim: bool = False) -> T | None:
    """Run ``pay`` in one transaction of the (unentered) unit of work and commit it.

    ``claim``: claim the message's request first (a repeat returns None); a step whose
    entity's status already says "settled" may leave it off.  On a failure for good,
    ``record_failure(reason)`` runs (it opens its own transaction) and the failure is
    raised on, for the dead letter."""
    try:
        with uow:
            if claim and not uow.claim():
                return None
            done = pay()
            uow.commit()
            return done
    except (Exception, TimeLimitExceeded) as exc:
        if final_attempt(exc):
            try:
                record_failure(failure_reason(exc))
            except Exception as unrecorded:  # the database is the cause: the dead letter stays
                log.error("payout.failure_unrecorded", error=str(unrecorded))
        raise


def failure_reason(exc: BaseException) -> str:
    """A refusal is its own sentence; anything else names its kind."""
    return str(exc) if isinstance(exc, BallastError) else f"{type(exc).__name__}: {exc}"


def check_escrow(escrow: str, held: int, expected: int) -> None:
    """The escrow holds what its lines say (before paying: the pool; after: nothing)."""
    if held != expected:
        raise LedgerError(f"{escrow} holds {held}, expected {expected}: the books disagree "
                          "with what it owes; nothing was paid")
