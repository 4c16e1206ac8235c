"""Buffers (SPEC §3): upstream flows, the settlement cycle, and the rebalancing lever.

    record_buffer_flow     an upstream service funded (or drew on) a buffer
    run_settlement_cycle   one replenishment job per buffer below min, sources shared
    set_auto_rebalance     the operator pauses or resumes scheduled cycles
    set_buffer_thresholds  the operator changes a buffer's min, target, max or batch
    report_custody         the custodian reports what it holds for a buffer
"""

from __future__ import annotations

from typing import Any

from domain import accounts
from domain import buffers as b
from domain.conversions import DIRECTIONS
from domain.ledger import Posting
from domain.money import format_minor
from domain.providers import smallest_minimum
from infra.contract.operations import ReportCustody, SetAutoRebalance, SetBufferThresholds
from infra.contract.treasury import RecordBufferFlow, RunSettlementCycle
from infra.logs import get_logger
from infra.treasury.cycle import AUTO_REBALANCE
from infra.treasury.store import Buffer
from infra.uow import UnitOfWork
from services import jobs

log = get_logger(__name__)


def record_buffer_flow(cmd: RecordBufferFlow, uow: UnitOfWork) -> int:
    """Funding (positive) or withdrawal (negative) against ``world:{CUR}``; a withdrawal
    larger than the buffer is refused (a buffer never goes negative)."""
    cur = b.CURRENCY_OF[cmd.account_type]
    return uow.ledger.post([Posting(accounts.world(cur), cur, -cmd.amount),
                            Posting(b.account_code(cmd.account_type), cur, cmd.amount)],
                           kind="buffer_flow", memo=cmd.reference,
                           metadata={"account_type": cmd.account_type, "reference": cmd.reference})


def requester(cmd: RunSettlementCycle, requested_by: str | None = None) -> str:
    """Who asked: a name, the scheduler, or the request (never a made-up name)."""
    who = requested_by or cmd.requested_by or ("scheduler" if cmd.trigger == "scheduled"
                                               else f"request {cmd.request_id}")
    return who[:200]


def run_settlement_cycle(cmd: RunSettlementCycle, uow: UnitOfWork,
                         requested_by: str | None = None) -> list[int]:
    """One cycle, planned as a whole under the buffers' locks (``domain.buffers.plan_cycle``).
    A scheduled one does nothing while auto-rebalancing is paused; none creates a job while
    conversions are frozen.  Returns the ids of the jobs it created.

    ``requested_by``, from an in-process caller only (the CLI's ``--by``, which it checks
    itself: 1-128 characters, the operator's key), names who asked in place of the
    message's field, whose contract rule (an identifier) is narrower."""
    if cmd.trigger == "scheduled" and not uow.buffers.setting(AUTO_REBALANCE, True):
        log.info("settlement_cycle.paused", detail="auto-rebalancing is paused")
        return []
    if uow.buffers.freeze_state():
        log.warning("settlement_cycle.frozen", detail="conversions are frozen")
        return []
    buffers = uow.buffers.load(lock=True)
    providers = [p.view() for p in uow.providers.list()]
    in_flight = {j.destination_type for j in uow.conversions.list(active_only=True)}
    levels = {t: b.BufferLevel(t, buf.balance, buf.thresholds) for t, buf in buffers.items()}
    minimums = {d: smallest_minimum(providers, d) for d in DIRECTIONS}
    plans = b.plan_cycle(levels, uow.conversions.reserved_by_pending(), in_flight, minimums)
    created: list[int] = []
    for plan in plans:
        if isinstance(plan, b.CannotReplenish):
            _cannot_replenish(uow, buffers[plan.destination], plan)
            continue
        created.append(jobs.create_job(uow, kind="replenishment", source_type=plan.source,
                                       destination_type=plan.destination,
                                       amount=plan.source_amount,
                                       requested_by=requester(cmd, requested_by),
                                       trigger=cmd.trigger))
        uow.alerts.resolve(f"buffer:cannot_replenish:{plan.destination}",
                           note=f"job {created[-1]} created")
        _shortfall(uow, buffers[plan.source].currency, plan, created[-1])
    evaluate_buffer_alerts(uow, buffers)
    log.info("settlement_cycle.done", trigger=cmd.trigger, jobs_created=len(created))
    return created


def _cannot_replenish(uow: UnitOfWork, buf, plan: b.CannotReplenish) -> None:
    uow.alerts.raise_(kind="buffer", severity="critical",
                      subject=f"{buf.account_type} cannot be replenished: {plan.reason}",
                      dedupe_key=f"buffer:cannot_replenish:{buf.account_type}",
                      data={"account_type": buf.account_type, "balance": buf.balance,
                            "source": plan.source, "reason": plan.reason})
    log.warning("settlement_cycle.cannot_replenish", account_type=buf.account_type,
                reason=plan.reason)


def _shortfall(uow: UnitOfWork, currency: str, plan: b.Replenishment, job_id: int) -> None:
    """A buffer served only in part gets an alert saying what is missing (cleared once a
    cycle serves it fully or it is no longer below min)."""
    key = f"buffer:shortfall:{plan.destination}"
    if not plan.capped or plan.wanted_amount <= plan.source_amount:
        uow.alerts.resolve(key, note=f"job {job_id} serves it fully")
        return
    missing = plan.wanted_amount - plan.source_amount
    uow.alerts.raise_(kind="buffer", severity="warning",
                      subject=f"{plan.destination} gets {format_minor(plan.source_amount, currency)}"
                              f" of {format_minor(plan.wanted_amount, currency)} from "
                              f"{plan.source}: {format_minor(missing, currency)} missing",
                      dedupe_key=key,
                      data={"account_type": plan.destination, "source": plan.source,
                            "wanted": plan.wanted_amount, "planned": plan.source_amount,
                            "missing": missing, "currency": currency, "job_id": job_id})


def set_auto_rebalance(cmd: SetAutoRebalance, uow: UnitOfWork) -> None:
    """Freeze or resume scheduled rebalancing (a manual cycle still runs when asked); the
    lever is audited."""
    uow.buffers.put_setting(AUTO_REBALANCE, cmd.enabled, cmd.performed_by)
    uow.conversions.record_lever("resume_rebalancing" if cmd.enabled else "pause_rebalancing",
                                 cmd.performed_by)


def set_buffer_thresholds(cmd: SetBufferThresholds, uow: UnitOfWork) -> tuple[Buffer, b.Thresholds]:
    """Change the thresholds given, keep the others (the domain refuses any but
    ``0 <= min < target < max`` and a positive batch); the lever is audited.  Returns the
    buffer as it was and its new thresholds."""
    buf = uow.buffers.lock(cmd.account_type)
    new = b.changed_thresholds(buf.thresholds, min=cmd.min_amount, target=cmd.target_amount,
                               max=cmd.max_amount, batch=cmd.batch_amount)
    uow.buffers.set_thresholds(cmd.account_type, new, cmd.performed_by)
    uow.conversions.record_lever("set_thresholds", cmd.performed_by, data={
        "account_type": cmd.account_type, **b.thresholds_doc(new)})
    return buf, new


def report_custody(cmd: ReportCustody, uow: UnitOfWork) -> dict[str, Any]:
    """What the custodian (the chain for USDC, a bank for USD) holds for a buffer now, for
    reconciliation against the ledger.  Returns the report."""
    return uow.buffers.report_custody(cmd.account_type, cmd.balance, cmd.performed_by)


def evaluate_buffer_alerts(uow, buffers: dict[str, Buffer] | None = None) -> None:
    """Critical low and over capitalized, raised while true and resolved when cleared."""
    buffers = buffers or uow.buffers.load()
    for buf in buffers.values():
        t = buf.thresholds
        checks = {
            "critical_low": (buf.status == b.CRITICAL_LOW, "critical",
                             f"{buf.account_type} is critically low: "
                             f"{format_minor(buf.balance, buf.currency)} < "
                             f"{format_minor(t.min, buf.currency)}"),
            "over_capitalized": (buf.status == b.OVER_CAPITALIZED, "warning",
                                 f"{buf.account_type} is over capitalized: "
                                 f"{format_minor(buf.balance, buf.currency)} > "
                                 f"{format_minor(t.max, buf.currency)}"),
        }
        for name, (true, severity, subject) in checks.items():
            key = f"buffer:{name}:{buf.account_type}"
            if true:
                uow.alerts.raise_(kind="buffer", severity=severity, subject=subject,
                                  dedupe_key=key,
                                  data={"account_type": buf.account_type, "balance": buf.balance,
                                        "min": t.min, "target": t.target, "max": t.max})
            else:
                uow.alerts.resolve(key, note=f"{buf.account_type} is {buf.status}")
        if buf.status != b.CRITICAL_LOW:
            for name in ("cannot_replenish", "shortfall"):
                uow.alerts.resolve(f"buffer:{name}:{buf.account_type}",
                                   note=f"{buf.account_type} is {buf.status}")
