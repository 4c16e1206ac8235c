"""How a provider's word moves a job it holds (``drive``: polls and callbacks), and the
stale flag.  The ``poll_conversion`` step that asks is ``services/conversions.py``.

The provider's status drives the job: asked every minute for every job (the
sweep), and per job after its submission with backoff (2 s, 4 s, 8 s ... 30 s);
a verified callback drives it by the same path (``drive``).  A job with its provider for 30 minutes
is stale: an alert, and it keeps being polled — never resubmitted while the
provider may still complete it.  Pending jobs nobody touched for a while are
handed back to ``submit_conversion``.
"""

from __future__ import annotations

from domain import conversions as conv
from infra.logs import get_logger
from infra.providers import ProviderError, Report
from infra.treasury.jobs import complete, fail, job_lock, now_utc
from infra.treasury.store import Attempt, Job
from infra.uow import UnitOfWork

log = get_logger(__name__)

#: A pending job untouched this long is handed to submit_conversion again by polling.
RESUBMIT_PENDING_AFTER_S = 120  # s


def drive(uow: UnitOfWork, job_id: int, told: Report | None, *,
          wait_s: float = 0, idempotency_key: str | None = None) -> bool:
    """The one path by which a provider's word moves a job: ``told`` (a verified
    callback) or, when None, the provider's answer to a status call.  Under the job's
    lock, so a callback and a poll arriving together change the job once.

    ``idempotency_key``: the order ``told`` is about must be the one the provider holds
    now (a callback speaks for one order only).  False when nothing could be applied.
    """
    with job_lock(uow, job_id, wait_s) as got:
        if not got:
            return False
        held = _held(uow, job_id, idempotency_key)
        if held is None:
            return False
        attempt, client = held
        report, problem = told, None
        if report is None:
            try:
                report = client.status(attempt.idempotency_key)
            except ProviderError as exc:
                problem = str(exc)
                log.warning("conversion.poll_failed", job_id=job_id, error=problem)
        with uow:
            job = uow.conversions.get(job_id, lock=True)
            if job.status in conv.WITH_PROVIDER and report is not None:
                job = _apply_report(uow, job, attempt, report)
            if job.status in conv.WITH_PROVIDER:
                flag_if_stale(uow, job, problem)
            uow.commit()
    return True


def _held(uow: UnitOfWork, job_id: int, idempotency_key: str | None):
    """The accepted attempt of a job with its provider, and that provider's client."""
    with uow:
        job = uow.conversions.get(job_id)
        if job.status not in conv.WITH_PROVIDER:
            return None
        attempt = next((a for a in uow.conversions.attempts(job_id)
                        if a.status == "accepted"), None)
        if attempt is None:
            log.error("conversion.no_accepted_attempt", job_id=job_id, status=job.status)
            return None
        if idempotency_key is not None and attempt.idempotency_key != idempotency_key:
            log.warning("conversion.callback_for_another_order", job_id=job_id,
                        key=idempotency_key, held=attempt.idempotency_key)
            return None
        return attempt, uow.providers.client(uow.providers.get(attempt.provider))


def schedule_first(uow: UnitOfWork, job_id: int) -> None:
    """After a submission: the job's first own poll (the rest follow with backoff)."""
    uow.send_later("poll_conversion", conv.poll_delay_ms(0),
                   request_id=f"conversion:{job_id}:poll:0", job_id=job_id, poll_no=0)


def _apply_report(uow: UnitOfWork, job: Job, attempt: Attempt, report: Report) -> Job:
    new = conv.after_report(job.status, report.state)
    if report.state == conv.NOT_FOUND:
        uow.alerts.raise_(kind="conversion", severity="critical",
                           subject=f"{attempt.provider} does not know conversion job {job.id}",
                           dedupe_key=f"conversion:lost:{job.id}",
                           data={"job_id": job.id, "key": attempt.idempotency_key})
        return job
    if new == conv.PROCESSING:
        return uow.conversions.move(job, new, f"{attempt.provider} is processing")
    if new == conv.COMPLETED:
        return complete(uow, job, attempt, report)
    if new == conv.FAILED:
        return fail(uow, job, report.detail or f"{attempt.provider} failed the order",
                    attempt=attempt)
    return job


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


