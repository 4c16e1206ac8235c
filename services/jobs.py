"""Conversion jobs: creating them, the per-job lock, and how they end (the steps shared by
the conversion handlers, ``services/conversions.py``, ``services/overrides.py`` and
``services/buffers.py``, and the stale-job condition).

A job moves ``pending -> provider_submitted -> provider_processing ->
completed`` (or ``failed`` / ``cancelled``), every transition recorded with its
time.  ``submission`` hands a pending job to a provider, ``polling`` follows it
there; both end here, in ``complete`` or ``fail``.

Lock order, everywhere: the job row, provider rows, buffer rows (in account-type
order), then ledger accounts.
"""

from __future__ import annotations

from datetime import datetime, timezone

from domain import accounts
from domain import conversions as conv
from domain import request_ids
from domain.buffers import CURRENCY_OF
from domain.ledger import Posting
from infra.errors import Transient
from infra.logs import get_logger
from infra.providers import Report
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
    uow.send("submit_conversion", request_id=request_ids.next_step("conversion", job_id, "submit"),
             job_id=job_id)
    log.info("conversion.created", job_id=job_id, direction=direction, amount=amount, kind=kind)
    return job_id


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
    resolve_job_alerts(uow, job, "completed")
    log.info("conversion.completed", job_id=job.id, provider=p, net=net, fee=fee)
    return job


def fail(uow: UnitOfWork, job: Job, reason: str, *, attempt: Attempt | None = None) -> Job:
    """Final failure: transit returns to the source, an alert, ``conversion.failed``."""
    if attempt is not None:
        uow.providers.count_outcome(attempt.provider, success=False)
        uow.conversions.finish_attempt(attempt, "failed", error=reason[:500])
    return_transit(uow, job, "conversion_return", "failed")
    job = uow.conversions.move(job, conv.FAILED, reason[:500], failure_reason=reason[:500],
                         finished_at=now_utc())
    uow.emit("conversion.failed", {**_event(job), "reason": reason[:500]}, recipient="admin")
    uow.alerts.raise_(kind="conversion", severity="critical",
                       subject=f"conversion job {job.id} failed: {reason[:200]}",
                       dedupe_key=f"conversion:failed:{job.id}",
                       data={"job_id": job.id, "direction": job.direction,
                             "source_amount": job.source_amount, "reason": reason[:500]})
    resolve_job_alerts(uow, job, "failed")
    log.warning("conversion.failed", job_id=job.id, reason=reason)
    return job


def schedule_first(uow: UnitOfWork, job_id: int) -> None:
    """After a submission: the job's first own poll (the rest follow with backoff)."""
    uow.send_later("poll_conversion", conv.poll_delay_ms(0),
                   request_id=request_ids.next_step("conversion", job_id, "poll", 0),
                   job_id=job_id, poll_no=0)


def flag_if_stale(uow: UnitOfWork, job: Job, problem: str | None = None) -> Job:
    """Alert once a job has been with its provider (or pending) too long; keep polling."""
    since = job.submitted_at or job.created_at
    if not conv.is_stale(since, now_utc()):
        return job
    uow.alerts.raise_(kind="conversion", severity="warning",
                       subject=f"conversion job {job.id} is stale ({job.status} since "
                               f"{since.isoformat()})",
                       dedupe_key=f"conversion:stale:{job.id}",
                       data={"job_id": job.id, "provider": job.provider, "status": job.status,
                             "last_error": problem})
    if job.stale_at is None:
        job = uow.conversions.update(job, stale_at=now_utc())
        uow.conversions.note(job, "stale: still polling, never resubmitted")
    return job


def resolve_job_alerts(uow: UnitOfWork, job: Job, how: str) -> None:
    """A job that ended is neither stale nor lost any more."""
    for key in (f"conversion:stale:{job.id}", f"conversion:lost:{job.id}"):
        uow.alerts.resolve(key, note=how)


def return_transit(uow: UnitOfWork, job: Job, kind: str, why: str) -> None:
    """The source amount a job moved to ``transit:{CUR}`` goes back to its source."""
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
