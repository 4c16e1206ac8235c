"""Conversion jobs: create, submit to a provider, poll, complete, fail, cancel.

A provider is never called inside a database transaction.  Submission runs in
three steps under a per-job advisory lock:

1. one transaction records the attempt (with its fresh idempotency key) and,
   the first time, moves the source amount to ``transit:{CUR}``;
2. the provider is called, outside any transaction;
3. another transaction records its answer.

A worker that dies between 2 and 3 leaves an attempt in ``submitting``; on
redelivery the provider is *asked* about that key (and only if it never heard
of it, the same key is sent again — it cannot become a second order), so a job
is never converted twice.
"""

from __future__ import annotations

import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator

from sqlalchemy import Engine, text

from domain import conversions as conv
from domain.buffers import CURRENCY_OF
from domain.errors import InvalidCommand, Refused
from domain.ledger import Posting
from domain.providers import rank, why_not
from infra import alerts, faults, ledger, providers
from infra.db.engine import get_engine
from infra.logs import get_logger
from infra.providers import ProviderError, ProviderRejected, ProviderUnavailable, Report
from infra.treasury import store
from infra.treasury.store import Attempt, Job
from infra.uow import UnitOfWork

log = get_logger(__name__)

#: Namespace of the per-job advisory locks (pg_advisory_lock(int, int)).
JOB_LOCK_CLASS = 5005
#: How long a submission waits for another worker holding the job.
SUBMIT_LOCK_WAIT_S = 20  # s
#: A pending job untouched this long is handed to submit_conversion again by polling.
RESUBMIT_PENDING_AFTER_S = 120  # s


class JobBusy(Exception):
    """Another worker holds the job; transient, the message is retried."""


class ProviderUncertain(Exception):
    """The provider may have the order and cannot say: transient, ask again later."""


# --- creating ----------------------------------------------------------------------------

def create_job(uow: UnitOfWork, *, kind: str, source_type: str, destination_type: str,
               amount: int, requested_by: str, trigger: str) -> int:
    """Insert a pending job and hand it to ``submit_conversion`` through the outbox."""
    direction = conv.direction_between(CURRENCY_OF[source_type], CURRENCY_OF[destination_type])
    job_id = store.insert_job(uow.conn, kind=kind, direction=direction, source_type=source_type,
                              destination_type=destination_type, amount=amount,
                              requested_by=requested_by, trigger=trigger)
    uow.send("submit_conversion", request_id=f"conversion:{job_id}:submit", job_id=job_id)
    log.info("conversion.created", job_id=job_id, direction=direction, amount=amount, kind=kind)
    return job_id


def convert_manually(uow: UnitOfWork, *, source_type: str, destination_type: str, amount: int,
                     performed_by: str) -> int:
    """An operator's conversion between two buffers of different currencies."""
    if source_type not in CURRENCY_OF or destination_type not in CURRENCY_OF:
        raise InvalidCommand(f"buffers are {', '.join(CURRENCY_OF)}")
    if type(amount) is not int or amount <= 0:
        raise InvalidCommand("amount must be a positive integer in minor units")
    available = ledger.balances(uow.conn, [f"buffer:{source_type}"]).get(f"buffer:{source_type}", 0)
    if available < amount:
        raise Refused(f"buffer:{source_type} holds {available}, cannot convert {amount}")
    return create_job(uow, kind="manual", source_type=source_type,
                      destination_type=destination_type, amount=amount,
                      requested_by=performed_by, trigger="manual")


# --- the per-job lock --------------------------------------------------------------------

@contextmanager
def job_lock(engine: Engine, job_id: int, wait_s: float = 0) -> Iterator[bool]:
    """Hold the job's advisory lock (on an autocommit connection: no open transaction).

    Yields False when it could not be had within ``wait_s``.  A worker that dies
    drops its connection, and the lock with it.
    """
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        deadline = time.monotonic() + wait_s
        while True:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:c, :j)"),
                               {"c": JOB_LOCK_CLASS, "j": job_id}).scalar_one()
            if got or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        try:
            yield bool(got)
        finally:
            if got:
                conn.execute(text("SELECT pg_advisory_unlock(:c, :j)"),
                             {"c": JOB_LOCK_CLASS, "j": job_id})
    finally:
        conn.close()


# --- submitting --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Submission:
    job: Job
    attempt: Attempt
    kind: str
    config: dict
    recovering: bool


@dataclass(frozen=True, slots=True)
class Answer:
    """What came of calling the provider: ``accepted``, ``rejected`` or ``error``."""

    outcome: str
    report: Report | None = None
    error: str | None = None


def submit(job_id: int, engine: Engine | None = None) -> str:
    """Drive a pending job until a provider has it, or it failed.  Returns its status."""
    engine = engine or get_engine()
    with job_lock(engine, job_id, SUBMIT_LOCK_WAIT_S) as got:
        if not got:
            raise JobBusy(f"conversion job {job_id} is held by another worker")
        while True:
            sub = _prepare_attempt(engine, job_id)
            if sub is None:
                with engine.connect() as conn:
                    return store.get_job(conn, job_id).status
            answer = _call_provider(sub, engine)
            faults.point("after_provider_submit", "submit_conversion")
            if _record_answer(engine, sub, answer):
                return conv.SUBMITTED


def _uow(engine: Engine, job_id: int, what: str) -> UnitOfWork:
    return UnitOfWork(actor="submit_conversion", request_id=f"conversion:{job_id}:{what}",
                      engine=engine)


def _prepare_attempt(engine: Engine, job_id: int) -> Submission | None:
    """Transaction 1: the attempt and its key, and the source moved to transit."""
    with _uow(engine, job_id, "prepare") as uow:
        job = store.get_job(uow.conn, job_id, lock=True)
        if job.status != conv.PENDING:
            return None
        tried = store.attempts_of(uow.conn, job_id)
        open_ = [a for a in tried if a.status == "submitting"]
        if open_:  # a worker died after (maybe) calling the provider: ask, do not resubmit
            a = open_[0]
            row = store.get_provider(uow.conn, a.provider)
            log.warning("conversion.recovering_attempt", job_id=job_id, key=a.idempotency_key)
            return Submission(job, a, row.kind, row.config, recovering=True)
        if not conv.retries_left(job.attempts):
            fail(uow, job, f"no provider took it after {job.attempts} attempts "
                           f"({conv.MAX_RETRIES} retries)")
            uow.commit()
            return None
        par = conv.par_value(job.source_amount, job.source_currency)
        rows = store.load_providers(uow.conn, lock=True)
        ranked = rank([r.view() for r in rows], job.direction, par,
                      exclude=[a.provider for a in tried])
        if not ranked:
            reasons = "; ".join(why_not(r.view(), job.direction, par) or f"{r.name} already tried"
                                for r in rows) or "no providers configured"
            fail(uow, job, f"no provider can take it: {reasons}")
            uow.commit()
            return None
        if not job.transit_moved:
            source = ledger.balances(uow.conn, [job.source_account]).get(job.source_account, 0)
            if source < job.source_amount:
                fail(uow, job, f"{job.source_account} holds {source}, needs {job.source_amount}")
                uow.commit()
                return None
            ledger.post(uow.conn, [
                Posting(job.source_account, job.source_currency, -job.source_amount),
                Posting(f"transit:{job.source_currency}", job.source_currency, job.source_amount),
            ], kind="conversion_transit", idempotency_key=f"conversion:{job.id}:transit",
                memo=f"conversion job {job.id} submitted", metadata={"job_id": job.id})
        chosen = next(r for r in rows if r.name == ranked[0].name)
        key = f"ballast-{job.id}-{job.attempts + 1}-{uuid.uuid4().hex[:12]}"
        attempt = store.insert_attempt(uow.conn, job, chosen.name, key, par)
        job = store.update_job(uow.conn, job, attempts=job.attempts + 1, provider=chosen.name,
                               transit_moved=True)
        uow.commit()
    log.info("conversion.submitting", job_id=job_id, provider=chosen.name, key=key,
             attempt=attempt.attempt_no)
    return Submission(job, attempt, chosen.kind, chosen.config, recovering=False)


def _call_provider(sub: Submission, engine: Engine) -> Answer:
    """Step 2, outside any transaction."""
    p = providers.build(sub.attempt.provider, sub.kind, sub.config, engine)
    key = sub.attempt.idempotency_key
    order = providers.Order(key, sub.job.direction, sub.job.source_amount)
    if sub.recovering:  # it may have the order: only its answer may send us elsewhere
        try:
            known = p.status(key)
        except ProviderError as exc:
            raise ProviderUncertain(f"cannot ask {p.name} about {key}: {exc}") from None
        if known.state != conv.NOT_FOUND:
            return Answer("accepted", known)
    try:
        return Answer("accepted", p.initiate(order))
    except ProviderRejected as exc:
        return Answer("rejected", error=str(exc))
    except ProviderUnavailable as exc:
        if not exc.maybe_accepted:
            return Answer("error", error=str(exc))
        try:
            known = p.status(key)
        except ProviderError as again:
            raise ProviderUncertain(f"{exc}; and its status is unknown: {again}") from None
        if known.state == conv.NOT_FOUND:
            return Answer("error", error=str(exc))
        log.info("conversion.accepted_despite_error", job_id=sub.job.id, error=str(exc))
        return Answer("accepted", known)


def _record_answer(engine: Engine, sub: Submission, answer: Answer) -> bool:
    """Transaction 3.  True when the job is settled for this step (a provider has it)."""
    with _uow(engine, sub.job.id, "record") as uow:
        job = store.get_job(uow.conn, sub.job.id, lock=True)
        if job.status != conv.PENDING:
            return True
        if answer.outcome == "accepted":
            store.finish_attempt(uow.conn, sub.attempt, "accepted",
                                 provider_ref=answer.report.reference if answer.report else None)
            store.move_job(uow.conn, job, conv.SUBMITTED,
                           f"{sub.attempt.provider} accepted {sub.attempt.idempotency_key}",
                           submitted_at=_now(), provider=sub.attempt.provider)
            uow.commit()
            log.info("conversion.submitted", job_id=job.id, provider=sub.attempt.provider)
            return True
        store.finish_attempt(uow.conn, sub.attempt, answer.outcome, error=answer.error)
        store.count_outcome(uow.conn, sub.attempt.provider, success=False)
        store.record_transition(uow.conn, job.id, job.status, job.status,
                                f"{sub.attempt.provider} {answer.outcome}: {answer.error}")
        uow.commit()
    log.warning("conversion.submission_failed", job_id=sub.job.id, provider=sub.attempt.provider,
                outcome=answer.outcome, error=answer.error)
    return False


# --- polling -----------------------------------------------------------------------------

def poll(job_id: int, engine: Engine | None = None) -> bool:
    """Ask the provider about a job it holds and move the job accordingly.

    False when the job is not with a provider or another worker holds it.
    """
    engine = engine or get_engine()
    with job_lock(engine, job_id) as got:
        if not got:
            return False
        with engine.connect() as conn:
            job = store.get_job(conn, job_id)
            if job.status not in conv.WITH_PROVIDER:
                return False
            attempt = next(a for a in store.attempts_of(conn, job_id) if a.status == "accepted")
            row = store.get_provider(conn, attempt.provider)
        report, problem = None, None
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
    if not conv.is_stale(since, _now()):
        return job
    alerts.raise_alert(uow, kind="conversion", severity="warning",
                       subject=f"conversion job {job.id} is stale ({job.status} since "
                               f"{since.isoformat()})",
                       dedupe_key=f"conversion:stale:{job.id}",
                       data={"job_id": job.id, "provider": job.provider, "status": job.status,
                             "last_error": problem})
    if job.stale_at is None:
        job = store.update_job(uow.conn, job, stale_at=_now())
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
        elif (_now() - job.updated_at).total_seconds() >= RESUBMIT_PENDING_AFTER_S:
            _rekick(engine, job, request_id)
    return polled


def _rekick(engine: Engine, job: Job, request_id: str) -> None:
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


# --- outcomes ----------------------------------------------------------------------------

def complete(uow: UnitOfWork, job: Job, attempt: Attempt, report: Report) -> Job:
    """transit -> provider -> destination at the provider's actual rate; fee booked."""
    net, fee = report.destination_amount, report.fee_amount or 0
    if type(net) is not int or type(fee) is not int or net < 0 or fee < 0:
        raise ProviderUncertain(f"{attempt.provider} completed job {job.id} without amounts")
    src, dst, p = job.source_currency, job.destination_currency, attempt.provider
    # Lock order everywhere: job, provider rows, then ledger accounts (no deadlocks).
    store.count_outcome(uow.conn, p, success=True)
    postings = [
        Posting(f"transit:{src}", src, -job.source_amount),
        Posting(f"provider:{p}:{src}", src, job.source_amount),
        Posting(f"provider:{p}:{dst}", dst, -(net + fee)),
        Posting(job.destination_account, dst, net),
        Posting(f"fees:conversion:{dst}", dst, fee),
    ]
    ledger.post(uow.conn, [x for x in postings if x.amount != 0], kind="conversion",
                idempotency_key=f"conversion:{job.id}:complete",
                memo=f"conversion job {job.id} completed by {p}",
                metadata={"job_id": job.id, "provider": p, "rate_ppm": report.rate_ppm,
                          "provider_ref": report.reference})
    job = store.move_job(uow.conn, job, conv.COMPLETED, f"{p} completed: {net} {dst} net, "
                         f"fee {fee}", destination_amount=net, fee_amount=fee, finished_at=_now())
    store.finish_attempt(uow.conn, attempt, "completed")
    uow.emit("conversion.completed", _event(job), recipient="admin")
    for key in (f"conversion:stale:{job.id}", f"conversion:lost:{job.id}"):
        alerts.resolve_alert(uow, key, note="completed")
    log.info("conversion.completed", job_id=job.id, provider=p, net=net, fee=fee)
    return job


def fail(uow: UnitOfWork, job: Job, reason: str, *, attempt: Attempt | None = None) -> Job:
    """Final failure: transit returns to the source, an alert, ``conversion.failed``."""
    if attempt is not None:
        store.count_outcome(uow.conn, attempt.provider, success=False)
        store.finish_attempt(uow.conn, attempt, "failed", error=reason[:500])
    _return_transit(uow, job, "conversion_return", "failed")
    job = store.move_job(uow.conn, job, conv.FAILED, reason[:500], failure_reason=reason[:500],
                         finished_at=_now())
    uow.emit("conversion.failed", {**_event(job), "reason": reason[:500]}, recipient="admin")
    alerts.raise_alert(uow, kind="conversion", severity="critical",
                       subject=f"conversion job {job.id} failed: {reason[:200]}",
                       dedupe_key=f"conversion:failed:{job.id}",
                       data={"job_id": job.id, "direction": job.direction,
                             "source_amount": job.source_amount, "reason": reason[:500]})
    for key in (f"conversion:stale:{job.id}", f"conversion:lost:{job.id}"):
        alerts.resolve_alert(uow, key, note="failed")
    log.warning("conversion.failed", job_id=job.id, reason=reason)
    return job


def cancel(job_id: int, *, by: str, reason: str, force: bool = False,
           engine: Engine | None = None) -> Job:
    """An operator stops a job.  A job a provider may still hold needs ``force``
    (the operator vouches that the provider will not complete it)."""
    engine = engine or get_engine()
    with job_lock(engine, job_id, SUBMIT_LOCK_WAIT_S) as got:
        if not got:
            raise Refused(f"conversion job {job_id} is being worked on; try again")
        with UnitOfWork(actor="cancel_conversion", request_id=f"conversion:{job_id}:cancel",
                        engine=engine) as uow:
            job = store.get_job(uow.conn, job_id, lock=True)
            if job.status in conv.TERMINAL:
                raise Refused(f"conversion job {job_id} is {job.status} already")
            held = [a for a in store.attempts_of(uow.conn, job_id)
                    if a.status in ("submitting", "accepted")]
            if held and not force:
                raise Refused(f"{held[0].provider} may still convert job {job_id} "
                              f"(attempt {held[0].idempotency_key}); use --force if it will not")
            for a in held:
                store.finish_attempt(uow.conn, a, "abandoned", error=f"cancelled by {by}")
            _return_transit(uow, job, "conversion_cancel", "cancelled")
            job = store.move_job(uow.conn, job, conv.CANCELLED, f"cancelled by {by}: {reason}",
                                 failure_reason=f"cancelled by {by}: {reason}"[:500],
                                 finished_at=_now())
            for key in (f"conversion:stale:{job.id}", f"conversion:lost:{job.id}"):
                alerts.resolve_alert(uow, key, note="cancelled")
            uow.commit()
    return job


def _return_transit(uow: UnitOfWork, job: Job, kind: str, why: str) -> None:
    if not job.transit_moved:
        return
    ledger.post(uow.conn, [
        Posting(f"transit:{job.source_currency}", job.source_currency, -job.source_amount),
        Posting(job.source_account, job.source_currency, job.source_amount),
    ], kind=kind, idempotency_key=f"conversion:{job.id}:return",
        memo=f"conversion job {job.id} {why}: back to source", metadata={"job_id": job.id})


def _event(job: Job) -> dict:
    return {"job_id": job.id, "kind": job.kind, "direction": job.direction,
            "source_account": job.source_account, "destination_account": job.destination_account,
            "source_amount": job.source_amount, "destination_amount": job.destination_amount,
            "fee_amount": job.fee_amount, "provider": job.provider, "attempts": job.attempts}


def _now() -> datetime:
    return datetime.now(timezone.utc)
