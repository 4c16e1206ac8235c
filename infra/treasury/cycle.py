"""Buffers: upstream flows, the settlement cycle, and the buffer alerts."""

from __future__ import annotations

from domain import accounts
from domain import buffers as b
from domain.conversions import DIRECTIONS
from domain.ledger import Posting
from domain.money import format_minor
from domain.providers import smallest_minimum
from infra import alerts, ledger
from infra.logs import get_logger
from infra.treasury import jobs, store
from infra.uow import UnitOfWork

log = get_logger(__name__)

AUTO_REBALANCE = "auto_rebalance"


def record_flow(uow: UnitOfWork, account_type: str, amount: int, reference: str) -> int:
    """Funding (positive) or withdrawal (negative) reported by an upstream service.

    The counterpart is ``world:{CUR}``; a withdrawal larger than the buffer is
    refused (a buffer never goes negative).
    """
    cur = b.CURRENCY_OF[account_type]
    return ledger.post(uow.conn, [Posting(accounts.world(cur), cur, -amount),
                                  Posting(b.account_code(account_type), cur, amount)],
                       kind="buffer_flow", memo=reference,
                       metadata={"account_type": account_type, "reference": reference})


def auto_rebalance_enabled(conn) -> bool:
    return bool(store.get_setting(conn, AUTO_REBALANCE, True))


def set_auto_rebalance(uow: UnitOfWork, enabled: bool, by: str) -> None:
    store.put_setting(uow.conn, AUTO_REBALANCE, enabled, by)


def run_cycle(uow: UnitOfWork, trigger: str, requested_by: str = "scheduler") -> list[int]:
    """One settlement cycle (SPEC §3).  Returns the ids of the jobs it created.

    Buffers are locked for the cycle, so two cycles run one after the other
    and the second sees the first one's jobs.  The cycle is planned as a
    whole (``domain.buffers.plan_cycle``): buffers that draw on one source
    share what it can spare after its pending jobs.  A scheduled cycle does
    nothing while auto-rebalancing is paused; an operator's still runs.  No
    cycle creates a job while conversions are frozen.
    """
    if trigger == "scheduled" and not auto_rebalance_enabled(uow.conn):
        log.info("settlement_cycle.paused", detail="auto-rebalancing is paused")
        return []
    if store.freeze_state(uow.conn):  # the operator's emergency freeze: no new job at all
        log.warning("settlement_cycle.frozen", detail="conversions are frozen")
        return []
    buffers = store.load_buffers(uow.conn, lock=True)
    providers = [p.view() for p in store.load_providers(uow.conn)]
    in_flight = {j.destination_type for j in store.list_jobs(uow.conn, active_only=True,
                                                               limit=10_000)}
    for account_type in sorted(in_flight & set(buffers)):
        if buffers[account_type].status == b.CRITICAL_LOW:
            log.info("settlement_cycle.in_flight", account_type=account_type)
    levels = {t: b.BufferLevel(t, buf.balance, buf.thresholds) for t, buf in buffers.items()}
    minimums = {d: smallest_minimum(providers, d) for d in DIRECTIONS}
    plans = b.plan_cycle(levels, store.reserved_by_pending(uow.conn), in_flight, minimums)
    created: list[int] = []
    for plan in plans:
        if isinstance(plan, b.CannotReplenish):
            _cannot_replenish(uow, buffers[plan.destination], plan)
            continue
        created.append(jobs.create_job(uow, kind="replenishment", source_type=plan.source,
                                       destination_type=plan.destination,
                                       amount=plan.source_amount, requested_by=requested_by,
                                       trigger=trigger))
        alerts.resolve_alert(uow, f"buffer:cannot_replenish:{plan.destination}",
                             note=f"job {created[-1]} created")
        _shortfall(uow, buffers, plan, created[-1])
    evaluate_buffer_alerts(uow, buffers)
    log.info("settlement_cycle.done", trigger=trigger, jobs_created=len(created))
    return created


def _cannot_replenish(uow: UnitOfWork, buf: store.Buffer, plan: b.CannotReplenish) -> None:
    alerts.raise_alert(uow, kind="buffer", severity="critical",
                       subject=f"{buf.account_type} cannot be replenished: {plan.reason}",
                       dedupe_key=f"buffer:cannot_replenish:{buf.account_type}",
                       data={"account_type": buf.account_type, "balance": buf.balance,
                             "source": plan.source, "reason": plan.reason})
    log.warning("settlement_cycle.cannot_replenish", account_type=buf.account_type,
                reason=plan.reason)


def _shortfall(uow: UnitOfWork, buffers: dict[str, store.Buffer], plan: b.Replenishment,
               job_id: int) -> None:
    """A buffer served only in part gets an alert saying what is missing (and it
    clears once a cycle serves it fully or it is no longer below min)."""
    key = f"buffer:shortfall:{plan.destination}"
    if not plan.capped or plan.wanted_amount <= plan.source_amount:
        alerts.resolve_alert(uow, key, note=f"job {job_id} serves it fully")
        return
    src = buffers[plan.source]
    missing = plan.wanted_amount - plan.source_amount
    alerts.raise_alert(uow, kind="buffer", severity="warning",
                       subject=f"{plan.destination} gets {format_minor(plan.source_amount, src.currency)}"
                               f" of {format_minor(plan.wanted_amount, src.currency)} from "
                               f"{plan.source}: {format_minor(missing, src.currency)} missing",
                       dedupe_key=key,
                       data={"account_type": plan.destination, "source": plan.source,
                             "wanted": plan.wanted_amount, "planned": plan.source_amount,
                             "missing": missing, "currency": src.currency, "job_id": job_id})


def evaluate_buffer_alerts(uow: UnitOfWork, buffers: dict[str, store.Buffer] | None = None) -> None:
    """Critical low and over capitalized, raised while true and resolved when cleared."""
    buffers = buffers or store.load_buffers(uow.conn)
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
                alerts.raise_alert(uow, kind="buffer", severity=severity, subject=subject,
                                   dedupe_key=key,
                                   data={"account_type": buf.account_type, "balance": buf.balance,
                                         "min": t.min, "target": t.target, "max": t.max})
            else:
                alerts.resolve_alert(uow, key, note=f"{buf.account_type} is {buf.status}")
        if buf.status != b.CRITICAL_LOW:
            for name in ("cannot_replenish", "shortfall"):
                alerts.resolve_alert(uow, f"buffer:{name}:{buf.account_type}",
                                     note=f"{buf.account_type} is {buf.status}")
