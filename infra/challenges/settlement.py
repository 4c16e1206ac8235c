"""The operator's retry of a challenge settlement that failed for good (``ballast challenge
settle ID``).

The settlement step (``services.challenges.settle_challenge``) pays seats batch by batch;
when it fails for good the challenge is left ``settlement_failed`` with the reason and a
critical alert (``services.challenges.record_settlement_failure``).  ``retry`` puts it back
to ``resolved`` and hands a fresh ``settle_challenge`` on: the batches already paid are
skipped, so nobody is paid twice.  (A CLI lever, here in ``infra`` until it is a command
of the contract: ``infra`` never imports the services.)
"""

from __future__ import annotations

from domain.challenges import Challenge
from domain.request_ids import next_step
from infra.logs import get_logger
from infra.uow import UnitOfWork

log = get_logger(__name__)


def retry(uow: UnitOfWork, challenge_id: str, requested_by: str) -> Challenge:
    """settlement_failed → resolved, and a new ``settle_challenge`` (after commit)."""
    challenge = uow.challenges.get(challenge_id, lock=True).retry_settlement()
    attempt = uow.challenges.reopen_settlement(challenge_id)
    uow.send("settle_challenge", challenge_id=challenge_id,
             request_id=next_step("challenge", challenge_id, "settle", "retry", attempt))
    uow.emit("admin.treasury.settlement_retried", {
        "challenge_id": challenge_id, "retry": attempt, "requested_by": requested_by},
        recipient="admin")
    log.info("challenge.settlement_retried", challenge_id=challenge_id, retry=attempt,
             requested_by=requested_by)
    return challenge
