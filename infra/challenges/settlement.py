"""A challenge settlement that failed for good, and the operator's retry.

The settlement step pays seats batch by batch; each batch marks its seats settled
in the transaction that pays them.  When the step fails for good (a permanent
error, or a transient one on its last attempt) the challenge is left
``settlement_failed`` with the reason and a critical alert.  ``retry`` (``ballast
challenge settle ID``) puts it back to ``resolved`` and hands a fresh
``settle_challenge`` on: the batches already paid are skipped, so nobody is paid twice.
"""

from __future__ import annotations

from domain.challenges import Challenge
from infra.alerts import raise_alert, resolve_alert
from infra.challenges import repository as repo
from infra.logs import get_logger
from infra.uow import UnitOfWork

log = get_logger(__name__)


def alert_key(challenge_id: str) -> str:
    return f"challenge_settlement_failed:{challenge_id}"


def record_failure(challenge_id: str, reason: str) -> bool:
    """In its own transaction: ``settlement_failed``, an alert and an admin event.
    False when the challenge was not ``resolved`` (nothing to record)."""
    with UnitOfWork() as uow:
        challenge = repo.get(uow.conn, challenge_id, lock=True)
        if not repo.mark_settlement_failed(uow.conn, challenge_id, reason):
            return False
        raise_alert(uow, kind="challenge_settlement_failed", severity="critical",
                    subject=f"settlement of challenge {challenge_id} failed: {reason}"[:300],
                    dedupe_key=alert_key(challenge_id),
                    data={"challenge_id": challenge_id, "result": challenge.result,
                          "reason": reason[:500],
                          "retry": f"ballast challenge settle {challenge_id} --by NAME"})
        uow.emit("admin.treasury.settlement_failed", {
            "challenge_id": challenge_id, "result": challenge.result, "reason": reason[:500],
            "message": f"Settlement of {challenge_id} failed: {reason}"[:300]}, recipient="admin")
        uow.commit()
    log.error("challenge.settlement_failed", challenge_id=challenge_id, reason=reason)
    return True


def retry(uow: UnitOfWork, challenge_id: str, requested_by: str) -> Challenge:
    """settlement_failed → resolved, and a new ``settle_challenge`` (after commit)."""
    challenge = repo.get(uow.conn, challenge_id, lock=True).retry_settlement()
    attempt = repo.reopen_settlement(uow.conn, challenge_id)
    uow.send("settle_challenge", request_id=f"challenge:{challenge_id}:settle:retry:{attempt}",
             challenge_id=challenge_id)
    uow.emit("admin.treasury.settlement_retried", {
        "challenge_id": challenge_id, "retry": attempt, "requested_by": requested_by},
        recipient="admin")
    log.info("challenge.settlement_retried", challenge_id=challenge_id, retry=attempt,
             requested_by=requested_by)
    return challenge


def settled(uow: UnitOfWork, challenge_id: str) -> None:
    """A settlement that completed clears its failure alert (after a retry)."""
    resolve_alert(uow, alert_key(challenge_id), note="challenge settled")
