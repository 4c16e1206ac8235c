"""The operator's levers on conversions (SPEC §3): convert by hand, cancel a job, freeze and
thaw every conversion, end a stuck job by hand.

    convert_manually     an operator converts between two buffers, through a provider
    cancel_conversion    an operator stops a job; its transit returns to the source
    freeze_conversions   no new job, nothing submitted (held jobs are still polled)
    thaw_conversions     the freeze lifted; pending jobs go to submission again
    complete_conversion  a stuck job ended as its provider's completion would post it
    fail_conversion      a stuck job ended as its provider's failure would

Every lever records who pulled it, when and why (``uow.conversions.record_lever``: the
``treasury_overrides`` table).  A job ended by hand goes through ``jobs.complete`` /
``jobs.fail``, so the ledger sees exactly what a provider's real outcome would have posted.
The levers on one job hold its advisory lock (a worker submitting or polling it finishes
first) and commit before letting go of it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from domain import conversions as conv
from domain import request_ids
from domain.buffers import may_take
from domain.errors import InvalidCommand, Refused
from infra.contract.operations import (CancelConversion, CompleteConversion, ConvertManually,
                                       FailConversion, FreezeConversions, ThawConversions)
from infra.logs import get_logger
from infra.providers import Report
from services import jobs
from services.jobs import SUBMIT_LOCK_WAIT_S, job_lock, now_utc
from infra.treasury.store import FROZEN, Attempt, Job
from infra.uow import UnitOfWork

log = get_logger(__name__)

#: Attempt statuses under which a provider has (or may have) the order.
HELD = ("submitting", "accepted")


def convert_manually(cmd: ConvertManually, uow: UnitOfWork) -> int:
    """An operator's conversion between two buffers of different currencies; it obeys the
    source rule of every conversion (the source keeps its own min after what its pending
    jobs will take; checked again at submission).  Returns the new job's id."""
    freeze = uow.buffers.freeze_state()
    if freeze:
        raise Refused(f"conversions are frozen by {freeze['by']}: {freeze['reason']}")
    buffer = uow.buffers.lock(cmd.source_type)
    reserved = uow.conversions.reserved_by_pending().get(cmd.source_type, 0)
    refusal = may_take(cmd.source_type, cmd.amount, buffer.balance, buffer.thresholds, reserved)
    if refusal:
        raise Refused(f"cannot convert: {refusal}")
    return jobs.create_job(uow, kind="manual", source_type=cmd.source_type,
                           destination_type=cmd.destination_type, amount=cmd.amount,
                           requested_by=cmd.performed_by, trigger="manual")


def freeze_conversions(cmd: FreezeConversions, uow: UnitOfWork) -> dict[str, Any]:
    """Stop every conversion from starting: no new job, no submission.  Refused when frozen
    already.  Returns the freeze (``frozen, by, reason, at``)."""
    reason = _required(cmd.reason, "--reason is required to freeze conversions")
    current = uow.buffers.freeze_state()
    if current:
        raise Refused(f"conversions are frozen already (by {current['by']}: {current['reason']})")
    state = {"frozen": True, "by": cmd.performed_by, "reason": reason, "at": now_utc().isoformat()}
    uow.buffers.put_setting(FROZEN, state, cmd.performed_by)
    uow.conversions.record_lever("freeze", cmd.performed_by, reason=reason)
    uow.emit("conversion.frozen", {"by": cmd.performed_by, "reason": reason, "at": state["at"]},
             recipient="admin")
    log.warning("conversion.frozen", by=cmd.performed_by, reason=reason)
    return state


def thaw_conversions(cmd: ThawConversions, uow: UnitOfWork) -> dict[str, Any]:
    """Lift the freeze; pending jobs are handed to submission again at once.  Returns the
    setting with ``pending_resubmitted``, how many."""
    current = uow.buffers.freeze_state()
    if not current:
        raise Refused("conversions are not frozen")
    by = cmd.performed_by
    state = {"frozen": False, "by": by, "at": now_utc().isoformat()}
    uow.buffers.put_setting(FROZEN, state, by)
    pending = uow.conversions.list(statuses=(conv.PENDING,), limit=10_000)
    uow.conversions.record_lever("thaw", by, data={
        "frozen_by": current["by"], "frozen_at": current["at"],
        "pending_resubmitted": [j.id for j in pending]})
    for job in pending:
        uow.send("submit_conversion", request_id=request_ids.next_step("conversion", job.id, "thaw", state["at"]),
                 job_id=job.id)
    uow.emit("conversion.thawed", {"by": by, "at": state["at"], "frozen_by": current["by"],
                                   "pending_resubmitted": len(pending)}, recipient="admin")
    log.warning("conversion.thawed", by=by, pending=len(pending))
    return {**state, "pending_resubmitted": len(pending)}


def cancel_conversion(cmd: CancelConversion, uow: UnitOfWork) -> Job | None:
    """An operator stops a job; its transit returns to the source.  A job a provider may
    still hold needs ``force`` (the operator vouches it will not complete).  Returns the
    job (None for a request that took effect already)."""
    who, reason = cmd.performed_by, cmd.reason
    with _operator_hold(uow, cmd.job_id) as job:
        if job is None:
            return None
        held = [a for a in uow.conversions.attempts(job.id) if a.status in HELD]
        if held and not cmd.force:
            raise Refused(f"{held[0].provider} may still convert job {job.id} "
                          f"(attempt {held[0].idempotency_key}); use --force if it will not")
        for a in held:
            uow.conversions.finish_attempt(a, "abandoned", error=f"cancelled by {who}")
        jobs.return_transit(uow, job, "conversion_cancel", "cancelled")
        job = uow.conversions.move(job, conv.CANCELLED, f"cancelled by {who}: {reason}",
                                   failure_reason=f"cancelled by {who}: {reason}"[:500],
                                   finished_at=now_utc())
        jobs.resolve_job_alerts(uow, job, "cancelled")
        uow.commit()
    return job


def complete_conversion(cmd: CompleteConversion, uow: UnitOfWork) -> Job | None:
    """The provider delivered (the operator has its reference): post it like a real
    completion.  Refused when no provider holds the job (fail it instead)."""
    reason, evidence = _evidence(cmd.reason, cmd.evidence)
    with _operator_hold(uow, cmd.job_id) as job:
        if job is None:
            return None
        attempt = _held_attempt(uow, job)
        if attempt is None or not job.transit_moved:
            raise Refused(f"no provider holds conversion job {job.id}: nothing to complete "
                          "(fail it instead)")
        note = f"completed by hand by {cmd.performed_by}: {reason} (evidence {evidence})"
        if job.status == conv.PENDING:  # the provider took it; we never heard back
            job = uow.conversions.move(job, conv.SUBMITTED, note, submitted_at=now_utc(),
                                       provider=attempt.provider)
        uow.conversions.record_lever("complete", cmd.performed_by, job_id=job.id, reason=reason,
                                     evidence=evidence, data={
                                         "provider": attempt.provider,
                                         "destination_amount": cmd.destination_amount,
                                         "fee_amount": cmd.fee_amount})
        uow.conversions.note(job, note[:500])
        job = jobs.complete(uow, job, attempt, Report(
            "completed", evidence, cmd.destination_amount, cmd.fee_amount, None))
        uow.commit()
    log.warning("conversion.completed_by_hand", job_id=job.id, by=cmd.performed_by,
                evidence=evidence)
    return job


def fail_conversion(cmd: FailConversion, uow: UnitOfWork) -> Job | None:
    """The provider will not deliver (the operator has its reference): fail it like a real
    failure — transit back to the source, ``conversion.failed``, an alert."""
    reason, evidence = _evidence(cmd.reason, cmd.evidence)
    with _operator_hold(uow, cmd.job_id) as job:
        if job is None:
            return None
        attempt = _held_attempt(uow, job)
        uow.conversions.record_lever("fail", cmd.performed_by, job_id=job.id, reason=reason,
                                     evidence=evidence,
                                     data={"provider": attempt.provider if attempt else None})
        job = jobs.fail(uow, job, f"failed by hand by {cmd.performed_by}: {reason} "
                                  f"(evidence {evidence})", attempt=attempt)
        uow.commit()
    log.warning("conversion.failed_by_hand", job_id=job.id, by=cmd.performed_by,
                evidence=evidence)
    return job


@contextmanager
def _operator_hold(uow: UnitOfWork, job_id: int) -> Iterator[Job | None]:
    """What a lever on one job holds: the job's advisory lock (waiting a while for a
    worker), the unit of work with the request claimed, and the job's row.  Yields None for
    a request that took effect already; refused when the job has ended."""
    with job_lock(uow, job_id, SUBMIT_LOCK_WAIT_S) as got:
        if not got:
            raise Refused(f"conversion job {job_id} is being worked on; try again")
        with uow:
            if not uow.claim():
                log.info("request.duplicate", detail="already applied; nothing done")
                yield None
                return
            job = uow.conversions.get(job_id, lock=True)
            if job.status in conv.TERMINAL:
                raise Refused(f"conversion job {job_id} is {job.status} already")
            yield job


def _held_attempt(uow: UnitOfWork, job: Job) -> Attempt | None:
    """The attempt a provider has (or may have) for ``job``."""
    return next((a for a in reversed(uow.conversions.attempts(job.id)) if a.status in HELD),
                None)


def _required(text: str, refusal: str) -> str:
    if not text.strip():
        raise InvalidCommand(refusal)
    return text.strip()


def _evidence(reason: str, evidence: str) -> tuple[str, str]:
    return (_required(reason, "--reason is required"),
            _required(evidence, "--evidence (the provider's reference) is required"))
