"""Ledger and wallet views: ``ballast ledger check|balance``, ``ballast wallet show``."""

from __future__ import annotations

import click
from sqlalchemy import text

from domain.errors import InvalidCommand, NotFound
from domain.guard import parse_cursor
from domain.money import format_minor
from infra import guard, ledger, wallets
from infra.cli.output import console, emit, fail, json_option, table
from infra.db.engine import get_read_engine


def register(cli: click.Group) -> None:
    cli.add_command(ledger_group)
    cli.add_command(wallet_group)


@click.group("ledger")
def ledger_group() -> None:
    """Prove and read the ledger."""


@ledger_group.command("check")
@json_option
def ledger_check(as_json: bool) -> None:
    """Every transaction balances per currency, cached balances equal entry sums,
    no account that may not go negative is negative.  Exit 1 when not ok."""
    with get_read_engine().connect() as conn:
        result = ledger.check(conn)

    def human(d):
        status = "[green]OK[/green]" if d["ok"] else "[red]NOT OK[/red]"
        console.print(f"ledger {status}: {d['transactions']} transactions, {d['entries']} entries")
        for key in ("unbalanced", "balance_mismatches", "negative_balances"):
            if d[key]:
                table(d[key], title=key)

    emit(result, as_json, human)
    if not result["ok"]:
        raise SystemExit(1)


@ledger_group.command("balance")
@click.argument("account")
@json_option
def ledger_balance(account: str, as_json: bool) -> None:
    """The balance of one account, by code (e.g. treasury:NGN)."""
    with get_read_engine().connect() as conn:
        try:
            acc = ledger.balance(conn, account)
        except NotFound as exc:
            fail(str(exc), 1)
    doc = {"account": acc.code, "currency": acc.currency, "balance": acc.balance}
    emit(doc, as_json, lambda d: click.echo(f"{d['account']}: {format_minor(d['balance'], d['currency'])}"))


@click.group("wallet")
def wallet_group() -> None:
    """User wallets."""


@wallet_group.command("show")
@click.argument("user_id")
@click.option("--currency", default=None, help="Only this currency.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--after", "after", default=None, help="History older than this (a history_next_cursor).")
@json_option
def wallet_show(user_id: str, currency: str | None, limit: int, after: str | None,
                as_json: bool) -> None:
    """Balances, tier, history (a page at a time) and open alerts of one user."""
    try:
        cursor = parse_cursor(after)
    except InvalidCommand as exc:
        fail(str(exc), 2)
    with get_read_engine().connect() as conn:
        balances = wallets.balances(conn, user_id, currency)
        history, next_cursor = guard.history_page(conn, user_id, currency, limit, cursor)
        doc = {
            "user_id": user_id,
            "tier": guard.tier_of(conn, user_id),
            "balances": balances,
            # The audit trail: every change with before/after, who, why and its risk score.
            "history": history,
            "history_next_cursor": next_cursor,
            "alerts": open_alerts_for_user(conn, user_id),
            "limits": guard.limits_report(conn, user_id, sorted(balances)),
        }

    def human(d):
        console.print(f"[bold]{d['user_id']}[/bold] tier {d['tier']}")
        for cur, bal in d["balances"].items():
            lim = d["limits"][cur]
            console.print(f"  {format_minor(bal, cur)}  (daily {format_minor(lim['daily_used'], cur)} of "
                          f"{format_minor(lim['daily_limit'], cur)}, weekly "
                          f"{format_minor(lim['weekly_used'], cur)} of {format_minor(lim['weekly_limit'], cur)})")
        table(d["history"], ["at", "kind", "currency", "amount", "balance_before", "balance_after",
                             "reason", "performed_by", "risk_score", "transaction_id"],
              title="history")
        if d["history_next_cursor"]:
            console.print(f"  older: --after {d['history_next_cursor']}")
        if d["alerts"]:
            table(d["alerts"], title="open alerts")

    emit(doc, as_json, human)


def open_alerts_for_user(conn, user_id: str) -> list[dict]:
    rows = conn.execute(
        text(
            "SELECT id, kind, severity, subject, status, created_at FROM alerts "
            "WHERE status <> 'resolved' AND data->>'user_id' = :u ORDER BY id"
        ),
        {"u": user_id},
    )
    return [
        {"alert_id": r.id, "kind": r.kind, "severity": r.severity, "subject": r.subject,
         "status": r.status, "created_at": r.created_at.isoformat()}
        for r in rows
    ]
