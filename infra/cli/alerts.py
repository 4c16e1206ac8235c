"""Alerts, analytics, the audit trail and the guard's limits: ``ballast alerts``,
``ballast analytics``, ``ballast audit recent``, ``ballast guard`` (CONTRACT.md)."""

from __future__ import annotations

from datetime import datetime, timezone

import click

from domain import guard as rules
from domain.errors import BallastError, InvalidCommand
from domain.money import CURRENCIES, format_minor
from domain import request_ids
from infra import alerts, guard
from infra.cli import in_process
from infra.cli.identity import operator_identity
from infra.cli.output import console, emit, fail, json_option, table, timestamp
from infra.db.engine import get_read_engine

SUMMARY = ("alert_id", "kind", "severity", "subject", "status", "created_at")


def register(cli: click.Group) -> None:
    """Add this capability's commands to `ballast`."""
    cli.add_command(alerts_group)
    cli.add_command(analytics)
    cli.add_command(audit_group)
    cli.add_command(guard_group)


@click.group("alerts", invoke_without_command=True)
@click.option("--open", "open_only", is_flag=True, help="Only open and acknowledged alerts.")
@click.option("--kind", default=None, help="Only this kind (e.g. balance_critical).")
@click.option("--user", "user_id", default=None, help="Only alerts about this user.")
@click.option("--limit", default=200, show_default=True, type=click.IntRange(1, 100_000))
@json_option
@click.pass_context
def alerts_group(ctx: click.Context, open_only: bool, kind: str | None, user_id: str | None,
                 limit: int, as_json: bool) -> None:
    """List alerts, newest first (subcommands: ack, resolve, show)."""
    if ctx.invoked_subcommand is not None:
        return
    with get_read_engine().connect() as conn:
        rows = alerts.listing(conn, open_only=open_only, limit=limit, kind=kind, user_id=user_id)
    doc = [{k: r[k] for k in SUMMARY} for r in rows]
    emit(doc, as_json, lambda d: table(d, SUMMARY, title="open alerts" if open_only else "alerts",
                                       detail=["subject"]))


def _call(actor: str, **kwargs):
    """The command of ``actor`` run here (validated, claimed, committed, as its actor would):
    bad input exits 2, a refusal 1, with one line."""
    try:
        return in_process.call(actor, request_id=request_ids.fresh("cli", actor), **kwargs)
    except InvalidCommand as exc:
        fail(str(exc), 2)
    except BallastError as exc:
        fail(str(exc), 1)


@alerts_group.command("ack")
@click.argument("alert_id", type=int)
@click.option("--by", "by", required=True, help="Who acknowledges (recorded with the time).")
@json_option
def alerts_ack(alert_id: int, by: str, as_json: bool) -> None:
    """Acknowledge an open alert: it stays until its condition clears, and no duplicate opens."""
    if not by.strip():
        fail("--by needs a name", 2)
    by = operator_identity(by.strip())
    doc = _call("acknowledge_alert", alert_id=alert_id, acknowledged_by=by.strip())
    emit(doc, as_json, lambda d: console.print(
        f"alert {d['alert_id']} ({d['kind']}) acknowledged by {d['acknowledged_by']} "
        f"at {timestamp(d['acknowledged_at'])}"))


@alerts_group.command("resolve")
@click.argument("alert_id", type=int)
@click.option("--by", "by", required=True, help="Who resolves it (recorded with the time).")
@click.option("--note", required=True, help="How it was handled (recorded, sent with alert.resolved).")
@json_option
def alerts_resolve(alert_id: int, by: str, note: str, as_json: bool) -> None:
    """Resolve a one-shot alert (a failed conversion, a failed settlement) once it is handled.
    An alert whose condition still holds is raised again by the next sweep."""
    if not by.strip() or not note.strip():
        fail("--by and --note need a value", 2)
    doc = _call("resolve_alert", alert_id=alert_id, note=note.strip(), resolved_by=by.strip())
    emit(doc, as_json, lambda d: console.print(
        f"alert {d['alert_id']} ({d['kind']}) resolved by {d['resolved_by']}: {d['resolution_note']}"))


@alerts_group.command("show")
@click.argument("alert_id", type=int)
@json_option
def alerts_show(alert_id: int, as_json: bool) -> None:
    """One alert with its data, who acknowledged it and when it was resolved."""
    try:
        with get_read_engine().connect() as conn:
            doc = alerts.get(conn, alert_id)
    except BallastError as exc:
        fail(str(exc), 1)
    emit(doc, as_json, None)


def _when(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{name}: not an ISO 8601 time: {value!r}", 2)
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


@click.command()
@click.option("--user", "user_id", default=None, help="One user (default: platform-wide).")
@click.option("--agent", default=None,
              help="One agent: the operator or service that performed the changes (performed_by).")
@click.option("--period", required=True, type=click.Choice(list(rules.PERIODS)))
@click.option("--start", default=None, help="Custom period start, ISO 8601 (UTC if no offset).")
@click.option("--end", default=None, help="Custom period end (default: now for the others).")
@click.option("--currency", default=None, type=click.Choice(list(CURRENCIES)))
@json_option
def analytics(user_id: str | None, agent: str | None, period: str, start: str | None,
              end: str | None, currency: str | None, as_json: bool) -> None:
    """Balance analytics per currency: start and end balance, net and % change, totals by
    type, volatility, trend and risk level (SPEC §4) — per user, per agent, or platform-wide."""
    if user_id and agent:
        fail("give --user or --agent, not both", 2)
    try:
        lo, hi = rules.period_bounds(period, datetime.now(timezone.utc),
                                     _when(start, "--start"), _when(end, "--end"))
    except BallastError as exc:
        fail(str(exc), 2)
    with get_read_engine().connect() as conn:
        if agent:
            doc = guard.agent_analytics(conn, lo, hi, agent, currency=currency)
        else:
            doc = guard.analytics(conn, lo, hi, user_id=user_id, currency=currency)
    doc["period"] = period
    if agent:
        def agent_human(d):
            console.print(f"[bold]agent {d['agent']}[/bold] {d['period']} {d['start']} → {d['end']}")
            table([{"currency": cur, "changes": a["changes"], "users": a["users"],
                    "net": format_minor(a["net_change"], cur),
                    "volume": format_minor(a["volume"], cur),
                    "volatility": format_minor(a["volatility"], cur), "trend": a["trend"],
                    "max risk": a["max_risk_score"], "risky": a["risky_changes"],
                    "risk": a["risk_level"],
                    "by type": ", ".join(f"{k} {format_minor(v, cur)}"
                                         for k, v in a["totals_by_type"].items())}
                   for cur, a in d["currencies"].items()], title="agent analytics")

        emit(doc, as_json, agent_human)
        return

    def human(d):
        who = d["user_id"] or "platform"
        console.print(f"[bold]{who}[/bold] {d['period']} {d['start']} → {d['end']}")
        rows = []
        for cur, a in d["currencies"].items():
            rows.append({
                "currency": cur, "start": format_minor(a["start_balance"], cur),
                "end": format_minor(a["end_balance"], cur), "net": format_minor(a["net_change"], cur),
                "change %": "n/a" if a["change_percent"] is None else f"{a['change_percent']:.2f}",
                "changes": a["changes"], "volatility": format_minor(a["volatility"], cur),
                "trend": a["trend"], "risk": a["risk_level"],
                "by type": ", ".join(f"{k} {format_minor(v, cur)}" for k, v in a["totals_by_type"].items()),
            })
        table(rows, title="analytics")

    emit(doc, as_json, human)


@click.group("audit")
def audit_group() -> None:
    """The wallet audit trail across all customers."""


@audit_group.command("recent")
@click.option("--hours", default=24, show_default=True, type=click.IntRange(1, 24 * 366),
              help="Changes of the last H hours.")
@click.option("--by", "by", default=None, help="Only changes performed by this operator/service.")
@click.option("--min-risk", default=0, show_default=True, type=click.IntRange(0, 100),
              help="Only changes with at least this risk score.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--after", "after", default=None, help="The next_cursor of the previous page.")
@json_option
def audit_recent(hours: int, by: str | None, min_risk: int, limit: int, after: str | None,
                 as_json: bool) -> None:
    """Recent changes across all customers, newest first, a page at a time."""
    try:
        cursor = rules.parse_cursor(after)
    except BallastError as exc:
        fail(str(exc), 2)
    with get_read_engine().connect() as conn:
        doc = guard.recent_changes(conn, hours=hours, by=by, min_risk=min_risk, limit=limit,
                                   after=cursor)

    def human(d):
        table(d["changes"], ["audit_id", "at", "kind", "currency", "amount", "balance_after",
                             "risk_score", "user_id", "performed_by", "reason"],
              headers={"audit_id": "audit", "currency": "cur", "balance_after": "after",
                       "risk_score": "risk"},
              detail=["user_id", "performed_by", "reason"],
              title=f"changes of the last {hours} h")
        if d["next_cursor"]:
            console.print(f"  more: --after {d['next_cursor']}")

    emit(doc, as_json, human)


@click.group("guard")
def guard_group() -> None:
    """The balance guard's limits per tier and currency."""


@guard_group.command("limits")
@click.option("--tier", default=None, type=click.Choice(list(rules.TIERS)))
@click.option("--currency", default=None, type=click.Choice(list(CURRENCIES)))
@json_option
def guard_limits(tier: str | None, currency: str | None, as_json: bool) -> None:
    """Every tier's limits in minor units (min/max balance, daily/weekly, warning/critical)."""
    with get_read_engine().connect() as conn:
        table_ = guard.limit_table(conn)
    doc = [
        _limits_doc(table_.get(t, c))
        for t in rules.TIERS if tier in (None, t)
        for c in CURRENCIES if currency in (None, c)
    ]
    emit(doc, as_json, lambda d: table(d, title="limits", headers=LIMIT_HEADERS))


@guard_group.command("set-limit")
@click.argument("tier", type=click.Choice(list(rules.TIERS)))
@click.argument("currency", type=click.Choice(list(CURRENCIES)))
@click.option("--min-balance", type=int, default=None)
@click.option("--max-balance", type=int, default=None)
@click.option("--daily", type=int, default=None)
@click.option("--weekly", type=int, default=None)
@click.option("--warning", type=int, default=None)
@click.option("--critical", type=int, default=None)
@click.option("--by", "by", required=True, help="Who changes the limits (recorded).")
@json_option
def guard_set_limit(tier: str, currency: str, min_balance, max_balance, daily, weekly, warning,
                    critical, by: str, as_json: bool) -> None:
    """Change a tier's limits in one currency (minor units); applies to the next change."""
    changes = {k: v for k, v in dict(min_balance=min_balance, max_balance=max_balance,
                                     daily_limit=daily, weekly_limit=weekly, warning=warning,
                                     critical=critical).items() if v is not None}
    if not changes:
        fail("nothing to change: give at least one of --min-balance, --max-balance, --daily, "
             "--weekly, --warning, --critical", 2)
    by = operator_identity(by)
    try:  # the set_guard_limits command, run here; every refusal is bad input (exit 2)
        stored = in_process.call("set_guard_limits",
                                 request_id=request_ids.fresh("cli", "set_guard_limits"), tier=tier,
                                 currency=currency, performed_by=by, **changes)
    except BallastError as exc:
        fail(str(exc), 2)
    emit(_limits_doc(stored), as_json, lambda d: table([d], title="limits", headers=LIMIT_HEADERS))


#: Short headers of the limits table, for 80 columns.
LIMIT_HEADERS = {"currency": "cur", "min_balance": "min", "max_balance": "max",
                 "daily_limit": "daily", "weekly_limit": "weekly", "warning": "warn",
                 "critical": "crit"}


def _limits_doc(lim: rules.Limits) -> dict:
    return {"tier": lim.tier, "currency": lim.currency, "min_balance": lim.min_balance,
            "max_balance": lim.max_balance, "daily_limit": lim.daily, "weekly_limit": lim.weekly,
            "warning": lim.warning, "critical": lim.critical}
