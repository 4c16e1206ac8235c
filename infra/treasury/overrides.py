"""The operator's emergency levers: freeze/thaw every conversion, end a stuck job by hand.

Every lever records who pulled it, when, why (``treasury_overrides``; also the everyday
ones: rebalance, pausing rebalancing or a provider, thresholds — ``record_lever``).  While
frozen no job is created and nothing is submitted to a provider; jobs a
provider already holds keep being polled.  A job ended by hand goes through
``jobs.complete`` / ``jobs.fail``, so the ledger sees exactly what a provider's
real outcome would have posted.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, text

from domain import conversions as conv
from domain.errors import InvalidCommand, Refused
from infra.logs import get_logger
from infra.providers import Report
from infra.treasury import jobs, store
from infra.treasury.jobs import now_utc
from infra.treasury.store import Job
from infra.uow import UnitOfWork

log = get_logger(__name__)

FROZEN = store.FROZEN
#: The freeze in force (a dict: by, reason, at), or None.
frozen = store.freeze_state


def _who(by: str) -> str:
    if not by or not by.strip():
        raise InvalidCommand("--by NAME is required: who pulls the lever")
    return by.strip()


def record_lever(conn: Connection, action: str, by: str, *, reason: str | None = None,
                 data: dict[str, Any] | None = None) -> int:
    """Audit an operator's lever other than these (rebalance, pause/resume, thresholds)."""
    return store.record_override(conn, action, _who(by), reason=reason, data=data)


def freeze(uow: UnitOfWork, *, by: str, reason: str) -> dict[str, Any]:
    """Stop every conversion from starting: no new job, no submission."""
    by = _who(by)
    if not reason or not reason.strip():
        raise InvalidCommand("--reason is required to freeze conversions")
    current = uow.buffers.freeze_state()
    if current:
        raise Refused(f"conversions are frozen already (by {current['by']}: {current['reason']})")
    state = {"frozen": True, "by": by, "reason": reason.strip(), "at": now_utc().isoformat()}
    uow.buffers.put_setting(FROZEN, state, by)
    uow.conversions.record_lever("freeze", by, reason=reason.strip())
    uow.emit("conversion.frozen", {"by": by, "reason": reason.strip(), "at": state["at"]},
             recipient="admin")
    log.warning("conversion.frozen", by=by, reason=reason)
    return state


def thaw(uow: UnitOfWork, *, by: str) -> dict[str, Any]:
    """Lift the freeze; pending jobs are handed to submission again at once."""
    by = _who(by)
    current = uow.buffers.freeze_state()
    if not current:
        raise Refused("conversions are not frozen")
    state = {"frozen": False, "by": by, "at": now_utc().isoformat()}
    uow.buffers.put_setting(FROZEN, state, by)
    pending = uow.conversions.list(statuses=(conv.PENDING,), limit=10_000)
    uow.conversions.record_lever("thaw", by, data={"frozen_by": current["by"], "frozen_at": current["at"],
                                       "pending_resubmitted": [j.id for j in pending]})
    for job in pending:
        uow.send("submit_conversion", request_id=f"conversion:{job.id}:thaw:{state['at']}",
                 job_id=job.id)
    uow.emit("conversion.thawed", {"by": by, "at": state["at"], "frozen_by": current["by"],
                                   "pending_resubmitted": len(pending)}, recipient="admin")
    log.warning("conversion.thawed", by=by, pending=len(pending))
    return {**state, "pending_resubmitted": len(pending)}


def _held_attempt(uow: UnitOfWork, job: Job):
    """The attempt a provider has (or may have) for ``job``."""
    return next((a for a in reversed(uow.conversions.attempts(job.id))
                 if a.status in ("accepted", "submitting")), None)


def _check_evidence(by: str, reason: str, evidence: str) -> tuple[str, str, str]:
    by = _who(by)
    if not reason or not reason.strip():
        raise InvalidCommand("--reason is required")
    if not evidence or not evidence.strip():
        raise InvalidCommand("--evidence (the provider's reference) is required")
    return by, reason.strip(), evidence.strip()


def complete_by_hand(job_id: int, *, by: str, reason: str, evidence: str,
                     destination_amount: int, fee_amount: int,
                     engine: Engine | None = None) -> Job:
    """The provider delivered (the operator has its reference): post it like a real completion."""
    by, reason, evidence = _check_evidence(by, reason, evidence)
    if type(destination_amount) is not int or destination_amount <= 0:
        raise InvalidCommand("--destination-amount must be a positive integer in minor units")
    if type(fee_amount) is not int or fee_amount < 0:
        raise InvalidCommand("--fee must be a non-negative integer in minor units")
    with jobs.operator_hold(job_id, "override_conversion", f"conversion:{job_id}:override",
                            engine) as (uow, job):
        attempt = _held_attempt(uow, job)
        if attempt is None or not job.transit_moved:
            raise Refused(f"no provider holds conversion job {job_id}: nothing to complete "
                          "(fail it instead)")
        note = f"completed by hand by {by}: {reason} (evidence {evidence})"
        if job.status == conv.PENDING:  # the provider took it; we never heard back
            job = uow.conversions.move(job, conv.SUBMITTED, note, submitted_at=now_utc(),
                                 provider=attempt.provider)
        uow.conversions.record_lever("complete", by, job_id=job_id, reason=reason, evidence=evidence,
               data={"provider": attempt.provider, "destination_amount": destination_amount,
                     "fee_amount": fee_amount})
        uow.conversions.note(job, note[:500])
        job = jobs.complete(uow, job, attempt, Report(
            "completed", evidence, destination_amount, fee_amount, None))
        uow.commit()
    log.warning("conversion.completed_by_hand", job_id=job_id, by=by, evidence=evidence)
    return job


def fail_by_hand(job_id: int, *, by: str, reason: str, evidence: str,
                 engine: Engine | None = None) -> Job:
    """The provider will not deliver (the operator has its reference): fail it like a real
    failure — transit back to the source, ``conversion.failed``, an alert."""
    by, reason, evidence = _check_evidence(by, reason, evidence)
    with jobs.operator_hold(job_id, "override_conversion", f"conversion:{job_id}:override",
                            engine) as (uow, job):
        attempt = _held_attempt(uow, job)
        uow.conversions.record_lever("fail", by, job_id=job_id, reason=reason, evidence=evidence,
               data={"provider": attempt.provider if attempt else None})
        job = jobs.fail(uow, job, f"failed by hand by {by}: {reason} (evidence {evidence})",
                        attempt=attempt)
        uow.commit()
    log.warning("conversion.failed_by_hand", job_id=job_id, by=by, evidence=evidence)
    return job


def audit_log(conn: Connection, job_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
    rows = conn.execute(text(
        "SELECT * FROM treasury_overrides WHERE (CAST(:j AS bigint) IS NULL OR job_id = :j) "
        "ORDER BY id DESC LIMIT :lim"), {"j": job_id, "lim": limit})
    return [{"action": r.action, "job_id": r.job_id, "by": r.performed_by, "reason": r.reason,
             "evidence": r.evidence, "data": r.data, "at": r.at.isoformat()} for r in rows]
