"""Following jobs a provider holds (the ``poll_conversion`` step).

The provider's status drives the job: asked every minute for every job (the
sweep), and per job after its submission with backoff (2 s, 4 s, 8 s ... 30 s);
a verified callback drives it by the same path (``drive``).  A job with its provider for 30 minutes
is stale: an alert, and it keeps being polled — never resubmitted while the
provider may still complete it.  Pending jobs nobody touched for a while are
handed back to ``submit_conversion``.
"""

from __future__ import annotations

import uuid

from sqlalchemy import Engine

from domain import conversions as conv
from domain.providers import ACTIVE
from infra import alerts, providers
from infra.db.engine import get_engine
from infra.logs import get_logger
from infra.providers import ProviderError, Report
from infra.treasury import store
from infra.treasury.jobs import now_utc, complete, fail, job_lock
from infra.treasury.store import Attempt, Job
from infra.uow import UnitOfWork

log = get_logger(__name__)

#: A pending job untouched this long is handed to submit_conversion again by polling.
RESUBMIT_PENDING_AFTER_S = 120  # s


def poll(job_id: int, engine: Engine | None = None, *, poll_no: int | None = None) -> bool:
    """Ask the provider about a job it holds and move the job accordingly.

    False when the job is not with a provider or another worker holds it.  With
    ``poll_no`` (the job's own polls after submission) the next one is scheduled
    with backoff while the job is with its provider and not stale, even when this
    one found the job busy.
    """
    engine = engine or get_engine()
    done = drive(job_id, engine, None)
    if poll_no is not None:
        _schedule_next(engine, job_id, poll_no + 1)
    return done


def drive(job_id: int, engine: Engine, told: Report | None, *,
          wait_s: float = 0, idempotency_key: str | None = None) -> bool:
    """The one path by which a provider's word moves a job: ``told`` (a verified
    callback) or, when None, the provider's answer to a status call.  Under the job's
    lock, so a callback and a poll arriving together change the job once.

    ``idempotency_key``: the order ``told`` is about must be the one the provider holds
    now (a callback speaks for one order only).  False when nothing could be applied.
    """
    with job_lock(engine, job_id, wait_s) as got:
        if not got:
            return False
        with engine.connect() as conn:
            job = store.get_job(conn, job_id)
            if job.status not in conv.WITH_PROVIDER:
                return False
            attempt = next((a for a in store.attempts_of(conn, job_id)
                            if a.status == "accepted"), None)
            if attempt is None:
                log.error("conversion.no_accepted_attempt", job_id=job_id, status=job.status)
                return False
            if idempotency_key is not None and attempt.idempotency_key != idempotency_key:
                log.warning("conversion.callback_for_another_order", job_id=job_id,
                            key=idempotency_key, held=attempt.idempotency_key)
                return False
            row = store.get_provider(conn, attempt.provider)
        report, problem = told, None
        if report is None:
            try:
                report = providers.build(row.name, row.kind, row.config, engine).status(
                    attempt.idempotency_key)
            except ProviderError as exc:
                problem = str(exc)
                log.warning("conversion.poll_failed", job_id=job_id, error=problem)
        with UnitOfWork(actor="poll_conversion", request_id=f"conversion:{job_id}:poll",
                        engine=engine) as uow:
            job = store.get_job(uow.conn, job_id, lock=True)
            if job.status in conv.WITH_PROVIDER and report is not None:
                job = _apply_report(uow, job, attempt, report)
            if job.status in conv.WITH_PROVIDER:
                flag_if_stale(uow, job, problem)
            uow.commit()
    return True


def schedule_first(uow: UnitOfWork, job_id: int) -> None:
    """After a submission: the job's first own poll (the rest follow with backoff)."""
    uow.send_later("poll_conversion", conv.poll_delay_ms(0),
                   request_id=f"conversion:{job_id}:poll:0", job_id=job_id, poll_no=0)


def _schedule_next(engine: Engine, job_id: int, poll_no: int) -> None:
    with UnitOfWork(actor="poll_conversion", request_id=f"conversion:{job_id}:poll:{poll_no}",
                    engine=engine) as uow:
        job = store.get_job(uow.conn, job_id)
        if job.status not in conv.WITH_PROVIDER or job.stale_at is not None:
            return  # finished, or stale: the minute sweep keeps polling it
        uow.send_later("poll_conversion", conv.poll_delay_ms(poll_no),
                       request_id=f"conversion:{job_id}:poll:{poll_no}", job_id=job_id,
                       poll_no=poll_no)
        uow.commit()


def _apply_report(uow: UnitOfWork, job: Job, attempt: Attempt, report: Report) -> Job:
    new = conv.after_report(job.status, report.state)
    if report.state == conv.NOT_FOUND:
        alerts.raise_alert(uow, kind="conversion", severity="critical",
                           subject=f"{attempt.provider} does not know conversion job {job.id}",
                           dedupe_key=f"conversion:lost:{job.id}",
                           data={"job_id": job.id, "key": attempt.idempotency_key})
        return job
    if new == conv.PROCESSING:
        return store.move_job(uow.conn, job, new, f"{attempt.provider} is processing")
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
    alerts.raise_alert(uow, kind="conversion", severity="warning",
                       subject=f"conversion job {job.id} is stale ({job.status} since "
                               f"{since.isoformat()})",
                       dedupe_key=f"conversion:stale:{job.id}",
                       data={"job_id": job.id, "provider": job.provider, "status": job.status,
                             "last_error": problem})
    if job.stale_at is None:
        job = store.update_job(uow.conn, job, stale_at=now_utc())
        store.record_transition(uow.conn, job.id, job.status, job.status,
                                "stale: still polling, never resubmitted")
    return job


def poll_all(engine: Engine | None = None, *, request_id: str = "poll") -> int:
    """Poll every job a provider holds; hand long-untouched pending jobs back to submission.

    Returns how many jobs were polled.
    """
    engine = engine or get_engine()
    with engine.connect() as conn:
        jobs = store.list_jobs(conn, active_only=True, limit=10_000)
    polled = 0
    for job in sorted(jobs, key=lambda j: j.id):
        if job.status in conv.WITH_PROVIDER:
            polled += poll(job.id, engine)
        elif (now_utc() - job.updated_at).total_seconds() >= RESUBMIT_PENDING_AFTER_S:
            _rekick(engine, job, request_id)
    return polled


def _rekick(engine: Engine, job: Job, request_id: str) -> None:
    with engine.connect() as conn:
        if store.freeze_state(conn):  # frozen: nothing is submitted; thawing hands it back
            return
    with job_lock(engine, job.id) as got:
        if not got:  # being submitted right now
            return
    with UnitOfWork(actor="poll_conversion", request_id=request_id, engine=engine) as uow:
        current = store.get_job(uow.conn, job.id, lock=True)
        if current.status != conv.PENDING:
            return
        store.update_job(uow.conn, current, provider=current.provider)  # touch updated_at
        flag_if_stale(uow, current)
        uow.send("submit_conversion", request_id=f"conversion:{job.id}:resubmit:{uuid.uuid4().hex}",
                 job_id=job.id)
        uow.commit()
    log.warning("conversion.resubmitted_pending", job_id=job.id)


def probe_all(engine: Engine | None = None) -> dict[str, bool]:
    """Ask each active provider's health endpoint (outside any transaction) and store the
    answer; a provider whose fresh probe says down is left out of selection."""
    engine = engine or get_engine()
    with engine.connect() as conn:
        rows = [r for r in store.load_providers(conn) if r.status == ACTIVE]
    results: dict[str, bool] = {}
    for row in rows:
        error = None
        try:
            up = bool(providers.build(row.name, row.kind, row.config, engine).health())
            if not up:
                error = "health endpoint says down"
        except Exception as exc:  # an unreachable or broken provider is down, not our bug
            up, error = False, f"{type(exc).__name__}: {exc}"[:300]
        with engine.begin() as conn:
            store.record_probe(conn, row.name, up, error)
        results[row.name] = up
        if not up:
            log.warning("provider.probe_down", provider=row.name, error=error)
    return results
