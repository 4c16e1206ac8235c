"""Handing a pending conversion job to a provider (the ``submit_conversion`` step).

A provider is never called inside a database transaction.  Under the job's
advisory lock (lock order: the job row, provider rows, the source buffer row,
then ledger accounts in ascending id):

1. one transaction records the attempt (with its fresh idempotency key) and,
   the first time, moves the source amount to ``transit:{CUR}`` — only if the
   source keeps its own min after what older pending jobs will take
   (``domain.buffers.may_take``, checked under the source's lock);
2. the provider is called, outside any transaction;
3. another transaction records its answer.

A submission error (rejection, or an outage the provider confirms it never
saw) falls back to the next provider.  A worker that dies between 2 and 3
leaves the attempt ``submitting``; on redelivery the provider is *asked* about
that key (only if it never heard of it is the same key sent again, which
cannot become a second order), so a job is never converted twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import Engine

from domain import accounts
from domain import conversions as conv
from domain.buffers import may_take
from domain.ledger import Posting
from domain.providers import choose, rank, why_not
from infra import faults, ledger, providers
from infra.db.engine import get_engine
from infra.errors import Transient
from infra.logs import get_logger
from infra.providers import (
    ProviderError,
    ProviderQuote,
    ProviderRejected,
    ProviderUnavailable,
    Report,
)
from infra.treasury import store
from infra.treasury.polling import schedule_first as schedule_first_poll
from infra.treasury.jobs import SUBMIT_LOCK_WAIT_S, ProviderUncertain, now_utc, fail, job_lock
from infra.treasury.store import Attempt, Job
from infra.uow import UnitOfWork

log = get_logger(__name__)


class JobBusy(Transient):
    """Another worker holds the job; transient, the message is retried."""


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
            sub = _prepare_attempt(engine, job_id, _gather_quotes(engine, job_id))
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


def _gather_quotes(engine: Engine, job_id: int) -> dict[str, ProviderQuote | None]:
    """Ask each provider that could take the job what it would deliver (outside any
    transaction: a quote may be an HTTP call)."""
    with engine.connect() as conn:
        job = store.get_job(conn, job_id)
        if job.status != conv.PENDING:
            return {}
        tried = [a.provider for a in store.attempts_of(conn, job_id)]
        par = conv.par_value(job.source_amount, job.source_currency)
        rows = {r.name: r for r in store.load_providers(conn)}
    quotes: dict[str, ProviderQuote | None] = {}
    for view in rank([r.view() for r in rows.values()], job.direction, par, exclude=tried):
        row = rows[view.name]
        try:
            quotes[view.name] = providers.build(row.name, row.kind, row.config, engine).quote(
                job.direction, job.source_amount)
        except Exception as exc:  # a quote is advice: without one, priority decides
            log.warning("conversion.quote_failed", job_id=job_id, provider=row.name,
                        error=f"{type(exc).__name__}: {exc}"[:300])
            quotes[view.name] = None
    return quotes


def _decision(ranked: list, quotes: dict[str, ProviderQuote | None]) -> tuple[list[dict], str]:
    """The quotes as kept on the attempt, and one line saying why the first one won."""
    kept = [{"provider": p.name, "priority": p.priority,
             **({"rate_ppm": q.rate_ppm, "fee_amount": q.fee_amount,
                 "destination_amount": q.destination_amount, "source": q.source}
                if (q := quotes.get(p.name)) else {"destination_amount": None})}
            for p in ranked]
    best = kept[0]
    if any(k["destination_amount"] is None for k in kept):
        missing = ", ".join(k["provider"] for k in kept if k["destination_amount"] is None)
        return kept, (f"{best['provider']}: lowest priority ({best['priority']}); no quote from "
                      f"{missing}, so quotes were not compared")
    ties = [k for k in kept if k["destination_amount"] == best["destination_amount"]]
    why = (f"{best['provider']} quotes the most to the destination "
           f"({best['destination_amount']} net, fee {best['fee_amount']})")
    if len(ties) > 1:
        why += f", tied with {len(ties) - 1} other(s): lowest priority ({best['priority']}) wins"
    return kept, why


def _prepare_attempt(engine: Engine, job_id: int,
                     quotes: dict[str, ProviderQuote | None] | None = None) -> Submission | None:
    """Transaction 1: the attempt and its key, and the source moved to transit."""
    quotes = quotes or {}
    with _uow(engine, job_id, "prepare") as uow:
        job = store.get_job(uow.conn, job_id, lock=True)
        if job.status != conv.PENDING:
            return None
        freeze = store.freeze_state(uow.conn, lock=True)
        if freeze:  # nothing goes to a provider; thawing hands the job back to submission
            log.warning("conversion.frozen_not_submitted", job_id=job_id, by=freeze["by"])
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
        ranked = choose(rank([r.view() for r in rows], job.direction, par,
                             exclude=[a.provider for a in tried]),
                        {n: q.destination_amount for n, q in quotes.items() if q is not None})
        if not ranked:
            reasons = "; ".join(why_not(r.view(), job.direction, par) or f"{r.name} already tried"
                                for r in rows) or "no providers configured"
            fail(uow, job, f"no provider can take it: {reasons}")
            uow.commit()
            return None
        if not job.transit_moved:
            refusal = _source_refuses(uow, job)
            if refusal:
                fail(uow, job, refusal)
                uow.commit()
                return None
            ledger.post(uow.conn, [
                Posting(job.source_account, job.source_currency, -job.source_amount),
                Posting(accounts.transit(job.source_currency), job.source_currency, job.source_amount),
            ], kind="conversion_transit", idempotency_key=f"conversion:{job.id}:transit",
                memo=f"conversion job {job.id} submitted", metadata={"job_id": job.id})
        chosen = next(r for r in rows if r.name == ranked[0].name)
        key = f"ballast-{job.id}-{job.attempts + 1}-{uuid.uuid4().hex[:12]}"
        kept, why = _decision(ranked, quotes)
        attempt = store.insert_attempt(uow.conn, job, chosen.name, key, par, quotes=kept,
                                       decision=why)
        job = store.update_job(uow.conn, job, attempts=job.attempts + 1, provider=chosen.name,
                               transit_moved=True)
        uow.commit()
    log.info("conversion.submitting", job_id=job_id, provider=chosen.name, key=key,
             attempt=attempt.attempt_no)
    return Submission(job, attempt, chosen.kind, chosen.config, recovering=False)


def _source_refuses(uow: UnitOfWork, job: Job) -> str | None:
    """The source rule again, under the source's lock: the buffer row (which
    cycles and manual conversions take too) and then its ledger account with
    transit, in the ledger's own order, so the balance read is the one posted."""
    buffer = store.lock_buffer(uow.conn, job.source_type)
    held = ledger.lock_accounts(uow.conn, [job.source_account,
                                           accounts.transit(job.source_currency)])
    balance = held[job.source_account].balance if job.source_account in held else 0
    reserved = store.reserved_by_pending(uow.conn, before_job=job.id).get(job.source_type, 0)
    return may_take(job.source_type, job.source_amount, balance, buffer.thresholds, reserved)


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
                           submitted_at=now_utc(), provider=sub.attempt.provider)
            schedule_first_poll(uow, job.id)
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
