"""Conversion jobs: creating them, the per-job lock, and how they end.

A job moves ``pending -> provider_submitted -> provider_processing ->
completed`` (or ``failed`` / ``cancelled``), every transition recorded with its
time.  ``submission`` hands a pending job to a provider, ``polling`` follows it
there; both end here, in ``complete`` or ``fail``.

Lock order, everywhere: the job row, provider rows, buffer rows (in account-type
order), then ledger accounts.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator

from sqlalchemy import Engine

from domain import accounts
from domain import conversions as conv
from domain.buffers import CURRENCY_OF, may_take
from domain.errors import InvalidCommand, Refused
from domain.ledger import Posting
from infra.db.engine import get_engine
from infra.errors import Transient
from infra.logs import get_logger
from infra.providers import Report
from infra.treasury import store
from infra.treasury.store import Attempt, Job
from infra.uow import UnitOfWork

log = get_logger(__name__)

#: Namespace of the per-job advisory locks (pg_advisory_lock(int, int)).
JOB_LOCK_CLASS = 5005
#: How long a submission (or an operator's cancel) waits for another worker holding the job.
SUBMIT_LOCK_WAIT_S = 20  # s


class ProviderUncertain(Transient):
    """The provider may have the order and cannot say: transient, ask again later."""


# --- creating ----------------------------------------------------------------------------

def create_job(uow: UnitOfWork, *, kind: str, source_type: str, destination_type: str,
               amount: int, requested_by: str, trigger: str) -> int:
    """Insert a pending job and hand it to ``submit_conversion`` through the outbox."""
    direction = conv.direction_between(CURRENCY_OF[source_type], CURRENCY_OF[destination_type])
    job_id = uow.conversions.add(kind=kind, direction=direction, source_type=source_type,
                              destination_type=destination_type, amount=amount,
                              requested_by=requested_by, trigger=trigger)
    uow.send("submit_conversion", request_id=f"conversion:{job_id}:submit", job_id=job_id)
    log.info("conversion.created", job_id=job_id, direction=direction, amount=amount, kind=kind)
    return job_id


def convert_manually(uow: UnitOfWork, *, source_type: str, destination_type: str, amount: int,
                     performed_by: str) -> int:
    """An operator's conversion between two buffers of different currencies.

    It obeys the source rule of every conversion: the source keeps its own min
    after what its pending jobs will take (checked again at submission).
    """
    if source_type not in CURRENCY_OF or destination_type not in CURRENCY_OF:
        raise InvalidCommand(f"buffers are {', '.join(CURRENCY_OF)}")
    if type(amount) is not int or amount <= 0:
        raise InvalidCommand("amount must be a positive integer in minor units")
    freeze = uow.buffers.freeze_state()
    if freeze:
        raise Refused(f"conversions are frozen by {freeze['by']}: {freeze['reason']}")
    buffer = uow.buffers.lock(source_type)
    reserved = uow.conversions.reserved_by_pending().get(source_type, 0)
    refusal = may_take(source_type, amount, buffer.balance, buffer.thresholds, reserved)
    if refusal:
        raise Refused(f"cannot convert: {refusal}")
    return create_job(uow, kind="manual", source_type=source_type,
                      destination_type=destination_type, amount=amount,
                      requested_by=performed_by, trigger="manual")


# --- the per-job lock --------------------------------------------------------------------

def job_lock(uow: UnitOfWork, job_id: int, wait_s: float = 0):
    """Hold the job's advisory lock across the unit of work's transactions; yields False
    when it could not be had within ``wait_s``."""
    return uow.hold_lock(JOB_LOCK_CLASS, job_id, wait_s)


# --- outcomes ----------------------------------------------------------------------------

def complete(uow: UnitOfWork, job: Job, attempt: Attempt, report: Report) -> Job:
    """transit -> provider -> destination at the provider's actual rate; fee booked."""
    net, fee = report.destination_amount, report.fee_amount or 0
    if type(net) is not int or type(fee) is not int or net < 0 or fee < 0:
        raise ProviderUncertain(f"{attempt.provider} completed job {job.id} without amounts")
    src, dst, p = job.source_currency, job.destination_currency, attempt.provider
    uow.providers.count_outcome(p, success=True)
    postings = [
        Posting(accounts.transit(src), src, -job.source_amount),
        Posting(accounts.provider(p, src), src, job.source_amount),
        Posting(accounts.provider(p, dst), dst, -(net + fee)),
        Posting(job.destination_account, dst, net),
        Posting(f"fees:conversion:{dst}", dst, fee),
    ]
    uow.ledger.post([x for x in postings if x.amount != 0], kind="conversion",
                idempotency_key=f"conversion:{job.id}:complete",
                memo=f"conversion job {job.id} completed by {p}",
                metadata={"job_id": job.id, "provider": p, "rate_ppm": report.rate_ppm,
                          "provider_ref": report.reference})
    job = uow.conversions.move(job, conv.COMPLETED, f"{p} completed: {net} {dst} net, "
                         f"fee {fee}", destination_amount=net, fee_amount=fee, finished_at=now_utc())
    uow.conversions.finish_attempt(attempt, "completed")
    uow.emit("conversion.completed", _event(job), recipient="admin")
    for key in (f"conversion:stale:{job.id}", f"conversion:lost:{job.id}"):
        uow.alerts.resolve(key, note="completed")
    log.info("conversion.completed", job_id=job.id, provider=p, net=net, fee=fee)
    return job


def fail(uow: UnitOfWork, job: Job, reason: str, *, attempt: Attempt | None = None) -> Job:
    """Final failure: transit returns to the source, an alert, ``conversion.failed``."""
    if attempt is not None:
        uow.providers.count_outcome(attempt.provider, success=False)
        uow.conversions.finish_attempt(attempt, "failed", error=reason[:500])
    _return_transit(uow, job, "conversion_return", "failed")
    job = uow.conversions.move(job, conv.FAILED, reason[:500], failure_reason=reason[:500],
                         finished_at=now_utc())
    uow.emit("conversion.failed", {**_event(job), "reason": reason[:500]}, recipient="admin")
    uow.alerts.raise_(kind="conversion", severity="critical",
                       subject=f"conversion job {job.id} failed: {reason[:200]}",
                       dedupe_key=f"conversion:failed:{job.id}",
                       data={"job_id": job.id, "direction": job.direction,
                             "source_amount": job.source_amount, "reason": reason[:500]})
    for key in (f"conversion:stale:{job.id}", f"conversion:lost:{job.id}"):
        uow.alerts.resolve(key, note="failed")
    log.warning("conversion.failed", job_id=job.id, reason=reason)
    return job


@contextmanager
def operator_hold(job_id: int, actor: str, request_id: str,
                  engine: Engine | None = None) -> Iterator[tuple[UnitOfWork, Job]]:
    """What an operator's lever on one job holds: the job's advisory lock (waiting a while
    for a worker), a unit of work and the job's row, refused when the job has ended."""
    uow = UnitOfWork(actor=actor, request_id=request_id, engine=engine or get_engine())
    with job_lock(uow, job_id, SUBMIT_LOCK_WAIT_S) as got:
        if not got:
            raise Refused(f"conversion job {job_id} is being worked on; try again")
        with uow:
            job = uow.conversions.get(job_id, lock=True)
            if job.status in conv.TERMINAL:
                raise Refused(f"conversion job {job_id} is {job.status} already")
            yield uow, job


def cancel(job_id: int, *, by: str, reason: str, force: bool = False,
           engine: Engine | None = None) -> Job:
    """An operator stops a job.  A job a provider may still hold needs ``force``
    (the operator vouches that the provider will not complete it)."""
    with operator_hold(job_id, "cancel_conversion", f"conversion:{job_id}:cancel",
                       engine) as (uow, job):
        held = [a for a in uow.conversions.attempts(job_id)
                if a.status in ("submitting", "accepted")]
        if held and not force:
            raise Refused(f"{held[0].provider} may still convert job {job_id} "
                          f"(attempt {held[0].idempotency_key}); use --force if it will not")
        for a in held:
            uow.conversions.finish_attempt(a, "abandoned", error=f"cancelled by {by}")
        _return_transit(uow, job, "conversion_cancel", "cancelled")
        job = uow.conversions.move(job, conv.CANCELLED, f"cancelled by {by}: {reason}",
                             failure_reason=f"cancelled by {by}: {reason}"[:500],
                             finished_at=now_utc())
        for key in (f"conversion:stale:{job.id}", f"conversion:lost:{job.id}"):
            uow.alerts.resolve(key, note="cancelled")
        uow.commit()
    return job


def _return_transit(uow: UnitOfWork, job: Job, kind: str, why: str) -> None:
    if not job.transit_moved:
        return
    uow.ledger.post([
        Posting(accounts.transit(job.source_currency), job.source_currency, -job.source_amount),
        Posting(job.source_account, job.source_currency, job.source_amount),
    ], kind=kind, idempotency_key=f"conversion:{job.id}:return",
        memo=f"conversion job {job.id} {why}: back to source", metadata={"job_id": job.id})


def _event(job: Job) -> dict:
    return {"job_id": job.id, "kind": job.kind, "direction": job.direction,
            "source_account": job.source_account, "destination_account": job.destination_account,
            "source_amount": job.source_amount, "destination_amount": job.destination_amount,
            "fee_amount": job.fee_amount, "provider": job.provider, "attempts": job.attempts}


def now_utc() -> datetime:
    return datetime.now(timezone.utc)
