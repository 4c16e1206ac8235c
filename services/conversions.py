"""Conversions (SPEC §3): a pending job handed to a provider, and jobs a provider holds
followed until they end.

    submit_conversion          the best provider takes a pending job (falling back on errors)
    poll_conversion            the provider's status drives one job, or every job it holds
    apply_conversion_callback  a verified provider callback drives its job, as a poll would

A provider is never called inside a database transaction.  Under the job's advisory
lock (lock order: the job row, provider rows, the source buffer row, then ledger
accounts in ascending id), submission is three steps on the same unit of work:

1. one transaction records the attempt (with its fresh idempotency key) and, the first
   time, moves the source amount to ``transit:{CUR}`` — only if the source keeps its own
   min after what older pending jobs will take (``domain.buffers.may_take``, checked
   under the source's lock);
2. the provider is called, outside any transaction;
3. another transaction records its answer.

A submission error (rejection, or an outage the provider confirms it never saw) falls
back to the next provider.  A worker that dies between 2 and 3 leaves the attempt
``submitting``; on redelivery the provider is *asked* about that key (only if it never
heard of it is the same key sent again, which cannot become a second order), so a job is
never converted twice.  The provider's word then moves a job by one path (``drive``, for
polls and signed callbacks alike, under the job's lock); how a job ends (``complete``,
``fail``) is ``services/jobs.py``.  A job with its provider for 30 minutes is
stale: an alert, and it keeps being polled — never resubmitted while the provider may
still complete it.  Pending jobs nobody touched for a while go back to submission.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from domain import accounts
from domain import conversions as conv
from domain import request_ids
from domain.buffers import may_take
from domain.ledger import Posting
from domain.providers import choose, rank, why_not
from infra import faults
from infra.contract.treasury import ApplyConversionCallback, PollConversion, SubmitConversion
from infra.errors import Transient
from infra.logs import get_logger
from infra.providers import (
    Order,
    Provider,
    ProviderError,
    ProviderQuote,
    ProviderRejected,
    ProviderUnavailable,
    Report,
)
from services.jobs import (SUBMIT_LOCK_WAIT_S, ProviderUncertain, complete, fail,
                                 flag_if_stale, job_lock, now_utc, schedule_first)
from infra.treasury.store import Attempt, Job
from infra.uow import UnitOfWork

log = get_logger(__name__)

#: A pending job untouched this long is handed to submit_conversion again by polling.
RESUBMIT_PENDING_AFTER_S = 120  # s


class JobBusy(Transient):
    """Another worker holds the job; transient, the message is retried."""


@dataclass(frozen=True, slots=True)
class Submission:
    job: Job
    attempt: Attempt
    client: Provider
    recovering: bool


@dataclass(frozen=True, slots=True)
class Answer:
    """What came of calling the provider: ``accepted``, ``rejected`` or ``error``."""

    outcome: str
    report: Report | None = None
    error: str | None = None


def submit_conversion(cmd: SubmitConversion, uow: UnitOfWork) -> str:
    """Hand a pending job to the best provider, falling back on errors, until one has it
    or it failed; the provider is called outside any transaction.  Returns its status."""
    with job_lock(uow, cmd.job_id, SUBMIT_LOCK_WAIT_S) as got:
        if not got:
            raise JobBusy(f"conversion job {cmd.job_id} is held by another worker")
        while True:
            sub = _prepare_attempt(uow, cmd.job_id, _gather_quotes(uow, cmd.job_id))
            if sub is None:
                with uow:
                    status = uow.conversions.get(cmd.job_id).status
                log.info("submit_conversion.done", job_id=cmd.job_id, status=status)
                return status
            answer = _call_provider(sub)
            faults.point("after_provider_submit", "submit_conversion")
            if _record_answer(uow, sub, answer):
                log.info("submit_conversion.done", job_id=cmd.job_id, status=conv.SUBMITTED)
                return conv.SUBMITTED


def _gather_quotes(uow: UnitOfWork, job_id: int) -> dict[str, ProviderQuote | None]:
    """Ask each provider that could take the job what it would deliver (outside any
    transaction: a quote may be an HTTP call)."""
    with uow:
        job = uow.conversions.get(job_id)
        if job.status != conv.PENDING:
            return {}
        tried = [a.provider for a in uow.conversions.attempts(job_id)]
        par = conv.par_value(job.source_amount, job.source_currency)
        rows = {r.name: r for r in uow.providers.list()}
        ranked = rank([r.view() for r in rows.values()], job.direction, par, exclude=tried)
        clients = {v.name: uow.providers.client(rows[v.name]) for v in ranked}
    quotes: dict[str, ProviderQuote | None] = {}
    for name, client in clients.items():
        row = rows[name]
        try:
            quotes[name] = client.quote(job.direction, job.source_amount)
        except Exception as exc:  # a quote is advice: without one, priority decides
            log.warning("conversion.quote_failed", job_id=job_id, provider=row.name,
                        error=f"{type(exc).__name__}: {exc}"[:300])
            quotes[name] = None
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


def _prepare_attempt(uow: UnitOfWork, job_id: int,
                     quotes: dict[str, ProviderQuote | None] | None = None) -> Submission | None:
    """Transaction 1: the attempt and its key, and the source moved to transit."""
    quotes = quotes or {}
    with uow:
        job = uow.conversions.get(job_id, lock=True)
        if job.status != conv.PENDING:
            return None
        freeze = uow.buffers.freeze_state(lock=True)
        if freeze:  # nothing goes to a provider; thawing hands the job back to submission
            log.warning("conversion.frozen_not_submitted", job_id=job_id, by=freeze["by"])
            return None
        tried = uow.conversions.attempts(job_id)
        open_ = [a for a in tried if a.status == "submitting"]
        if open_:  # a worker died after (maybe) calling the provider: ask, do not resubmit
            a = open_[0]
            row = uow.providers.get(a.provider)
            log.warning("conversion.recovering_attempt", job_id=job_id, key=a.idempotency_key)
            return Submission(job, a, uow.providers.client(row), recovering=True)
        if not conv.retries_left(job.attempts):
            fail(uow, job, f"no provider took it after {job.attempts} attempts "
                           f"({conv.MAX_RETRIES} retries)")
            uow.commit()
            return None
        par = conv.par_value(job.source_amount, job.source_currency)
        rows = uow.providers.list(lock=True)
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
            uow.ledger.post([
                Posting(job.source_account, job.source_currency, -job.source_amount),
                Posting(accounts.transit(job.source_currency), job.source_currency, job.source_amount),
            ], kind="conversion_transit", idempotency_key=f"conversion:{job.id}:transit",
                memo=f"conversion job {job.id} submitted", metadata={"job_id": job.id})
        chosen = next(r for r in rows if r.name == ranked[0].name)
        key = f"ballast-{job.id}-{job.attempts + 1}-{uuid.uuid4().hex[:12]}"
        kept, why = _decision(ranked, quotes)
        attempt = uow.conversions.add_attempt(job, chosen.name, key, par, quotes=kept,
                                       decision=why)
        job = uow.conversions.update(job, attempts=job.attempts + 1, provider=chosen.name,
                               transit_moved=True)
        client = uow.providers.client(chosen)
        uow.commit()
    log.info("conversion.submitting", job_id=job_id, provider=chosen.name, key=key,
             attempt=attempt.attempt_no)
    return Submission(job, attempt, client, recovering=False)


def _source_refuses(uow: UnitOfWork, job: Job) -> str | None:
    """The source rule again, under the source's lock: the buffer row (which
    cycles and manual conversions take too) and then its ledger account with
    transit, in the ledger's own order, so the balance read is the one posted."""
    buffer = uow.buffers.lock(job.source_type)
    held = uow.ledger.lock_balances([job.source_account, accounts.transit(job.source_currency)])
    balance = held.get(job.source_account, 0)
    reserved = uow.conversions.reserved_by_pending(before_job=job.id).get(job.source_type, 0)
    return may_take(job.source_type, job.source_amount, balance, buffer.thresholds, reserved)


def _call_provider(sub: Submission) -> Answer:
    """Step 2, outside any transaction."""
    p = sub.client
    key = sub.attempt.idempotency_key
    order = Order(key, sub.job.direction, sub.job.source_amount)
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


def _record_answer(uow: UnitOfWork, sub: Submission, answer: Answer) -> bool:
    """Transaction 3.  True when the job is settled for this step (a provider has it)."""
    with uow:
        job = uow.conversions.get(sub.job.id, lock=True)
        if job.status != conv.PENDING:
            return True
        if answer.outcome == "accepted":
            uow.conversions.finish_attempt(sub.attempt, "accepted",
                                 provider_ref=answer.report.reference if answer.report else None)
            uow.conversions.move(job, conv.SUBMITTED,
                           f"{sub.attempt.provider} accepted {sub.attempt.idempotency_key}",
                           submitted_at=now_utc(), provider=sub.attempt.provider)
            schedule_first(uow, job.id)
            uow.commit()
            log.info("conversion.submitted", job_id=job.id, provider=sub.attempt.provider)
            return True
        uow.conversions.finish_attempt(sub.attempt, answer.outcome, error=answer.error)
        uow.providers.count_outcome(sub.attempt.provider, success=False)
        uow.conversions.note(job, f"{sub.attempt.provider} {answer.outcome}: {answer.error}")
        uow.commit()
    log.warning("conversion.submission_failed", job_id=sub.job.id, provider=sub.attempt.provider,
                outcome=answer.outcome, error=answer.error)
    return False


# --- following jobs a provider holds --------------------------------------------------------

def poll_conversion(cmd: PollConversion, uow: UnitOfWork) -> int:
    """Let the provider's status drive one job (its own polls after submission schedule
    the next with backoff), or every job a provider holds.  Returns how many were polled."""
    if cmd.job_id is None:
        polled = poll_all(uow, cmd.request_id)
        log.info("poll_conversion.done", polled=polled)
        return polled
    done = drive(uow, cmd.job_id, None)
    if cmd.poll_no is not None:
        _schedule_next(uow, cmd.job_id, cmd.poll_no + 1)
    return int(done)


def poll_all(uow: UnitOfWork, request_id: str) -> int:
    """Poll every job a provider holds; hand long-untouched pending jobs back to submission."""
    with uow:
        jobs = uow.conversions.list(active_only=True)
    polled = 0
    for job in sorted(jobs, key=lambda j: j.id):
        if job.status in conv.WITH_PROVIDER:
            polled += drive(uow, job.id, None)
        elif (now_utc() - job.updated_at).total_seconds() >= RESUBMIT_PENDING_AFTER_S:
            _rekick(uow, job, request_id)
    return polled


def _schedule_next(uow: UnitOfWork, job_id: int, poll_no: int) -> None:
    """The job's next own poll, while it is with its provider and not stale (stale: the
    minute sweep keeps polling it)."""
    with uow:
        job = uow.conversions.get(job_id)
        if job.status not in conv.WITH_PROVIDER or job.stale_at is not None:
            return
        uow.send_later("poll_conversion", conv.poll_delay_ms(poll_no),
                       request_id=request_ids.next_step("conversion", job_id, "poll", poll_no), job_id=job_id,
                       poll_no=poll_no)
        uow.commit()


def _rekick(uow: UnitOfWork, job: Job, request_id: str) -> None:
    """A pending job nobody touched for a while goes back to submission (not while frozen,
    nor while a worker is submitting it)."""
    with uow:
        if uow.buffers.freeze_state():  # thawing hands it back
            return
    with job_lock(uow, job.id) as got:
        if not got:
            return
    with uow:
        current = uow.conversions.get(job.id, lock=True)
        if current.status != conv.PENDING:
            return
        uow.conversions.update(current, provider=current.provider)  # touch updated_at
        flag_if_stale(uow, current)
        uow.send("submit_conversion", request_id=request_ids.fresh("conversion", job.id, "resubmit"),
                 job_id=job.id)
        uow.commit()
    log.warning("conversion.resubmitted_pending", job_id=job.id)


# --- how a provider's word moves a job ---------------------------------------------------------

def apply_conversion_callback(cmd: ApplyConversionCallback, uow: UnitOfWork) -> bool:
    """A verified callback (``ballast callbacks serve``) drives its job by the path of a
    poll, waiting a while for a worker holding the job.  False when nothing was applied
    (the job is no longer with its provider, or the callback is about another order)."""
    told = Report(cmd.state, cmd.reference, cmd.destination_amount, cmd.fee_amount,
                  cmd.rate_ppm, cmd.detail)
    return drive(uow, cmd.job_id, told, wait_s=SUBMIT_LOCK_WAIT_S,
                 idempotency_key=cmd.idempotency_key)


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
