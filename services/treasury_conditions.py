"""Treasury alert conditions, evaluated every minute by the ``evaluate_alerts`` sweep."""

from __future__ import annotations

from sqlalchemy import func, select

from domain import conversions as conv
from domain.providers import ACTIVE
from infra import alerts
from infra.db.tables import conversion_jobs
from infra.logs import get_logger
from infra.treasury import reconcile
from infra.treasury.reconcile import KEY_PREFIX, Difference
from infra.uow import UnitOfWork
from services import jobs
from services.buffers import evaluate_buffer_alerts

log = get_logger(__name__)


def buffer_levels(uow: UnitOfWork) -> None:
    """Buffers critically low or over capitalized."""
    evaluate_buffer_alerts(uow)


def provider_health(uow: UnitOfWork) -> None:
    """A provider with ≥ 10 outcomes in the window and a success rate under 80 %, or whose
    fresh health probe says down."""
    degraded = []
    for p in uow.providers.list():
        if p.status == ACTIVE and not p.view().healthy:
            total = p.successes + p.failures
            why = ("its health probe says down" if p.probe_healthy is False
                   else f"{p.successes}/{total} succeeded in the last 24 h")
            degraded.append(alerts.Alert(
                "provider", "warning", f"provider {p.name} is degraded: {why}",
                f"provider:degraded:{p.name}",
                {"provider": p.name, "successes": p.successes, "failures": p.failures,
                 "probe_healthy": p.probe_healthy}))
    alerts.reconcile(uow, "provider:degraded:", degraded)


def failure_rate(uow: UnitOfWork) -> None:
    """More than 5 % of the conversions finished in the last day failed."""
    j = conversion_jobs.c
    row = uow.conn.execute(
        select(func.count().filter(j.status == conv.COMPLETED).label("completed"),
               func.count().filter(j.status == conv.FAILED).label("failed"))
        .where(j.finished_at >= func.now() - conv.FAILURE_RATE_WINDOW)).one()
    key = "conversion:failure_rate"
    if conv.failure_rate_exceeded(row.completed, row.failed):
        alerts.raise_alert(uow, kind="conversion", severity="warning",
                           subject=f"{row.failed} of {row.completed + row.failed} conversions "
                                   "failed in the last day (over 5 %)",
                           dedupe_key=key, data={"completed": row.completed, "failed": row.failed})
    else:
        alerts.resolve_alert(uow, key, note="failure rate back under 5 %")


def stale_jobs(uow: UnitOfWork) -> None:
    """Jobs with their provider (or pending) for 30 minutes: alert, keep polling."""
    for seen in uow.conversions.list(active_only=True):
        job = uow.conversions.get(seen.id, lock=True)
        if job.status in conv.ACTIVE:
            jobs.flag_if_stale(uow, job)
    active = {f"conversion:stale:{j.id}" for j in uow.conversions.list(active_only=True)}
    alerts.resolve_all_except(uow, "conversion:stale:", active)


def reconciliation(uow: UnitOfWork) -> None:
    """Ledger against custodian, providers' books and our own jobs; differences alert."""
    found = reconcile.differences(uow.conn, reconcile.provider_reports(uow.engine))
    raise_alerts(uow, found)


def raise_alerts(uow, found: list[Difference]) -> int:
    """One alert per difference (with its amounts), ``conversion.reconciliation_failed`` for
    each new one; alerts of differences gone are resolved.  Returns how many are new."""
    opened = alerts.reconcile(uow, KEY_PREFIX, [
        alerts.Alert("reconciliation", "warning" if d.check == "stuck_job" else "critical",
                     f"reconciliation: {d.detail}"[:300], d.key, d.doc())
        for d in found])
    for d in {d.key: d for d in found}.values():  # one event per new alert
        if d.key in opened:
            uow.emit("conversion.reconciliation_failed", d.doc(), recipient="admin")
    if found:
        log.warning("reconcile.differences", count=len(found), new=len(opened))
    return len(opened)
