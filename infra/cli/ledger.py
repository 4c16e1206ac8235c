"""Ledger and wallet views: ``ballast ledger check|balance``, ``ballast wallet show``."""

from __future__ import annotations

import click
from sqlalchemy import text

from domain.errors import InvalidCommand, NotFound
from domain.guard import parse_cursor
from domain.money import format_minor
from infra import guard, ledger, wallets
from infra.cli.output import console, emit, fail, json_option, progress, record, table
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
    with get_read_engine().connect() as conn, progress("ledger check") as advance:
        result = ledger.check(conn, progress=advance)

    def human(d):
        status = "[green]OK[/green]" if d["ok"] else "[red]NOT OK[/red]"
        console.print(f"ledger {status}: {d['transactions']:,} transactions, "
                      f"{d['entries']:,} entries")
        for key in ("unbalanced", "balance_mismatches", "negative_balances"):
            if d[key]:
                table(d[key], title=key.replace("_", " "))

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
        if not _known_user(conn, user_id):
            fail(f"no wallet for user {user_id!r}: no account, no change, no tier", 1)
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
        record({"user_id": d["user_id"], "tier": d["tier"]}, title="wallet")
        table([{"currency": cur, "balance": bal,
                "daily_used": d["limits"][cur]["daily_used"],
                "daily_limit": d["limits"][cur]["daily_limit"],
                "weekly_used": d["limits"][cur]["weekly_used"],
                "weekly_limit": d["limits"][cur]["weekly_limit"]}
               for cur, bal in d["balances"].items()], title="balances")
        table(d["history"], ["at", "kind", "currency", "amount", "balance_after", "risk_score",
                             "transaction_id", "performed_by", "reason"],
              headers={"currency": "cur", "balance_after": "after", "risk_score": "risk",
                       "transaction_id": "txn"},
              detail=["performed_by", "reason"], title="history (newest first)")
        if d["history_next_cursor"]:
            click.echo(f"older: --after {d['history_next_cursor']}")
        if d["alerts"]:
            table(d["alerts"], ["alert_id", "kind", "severity", "status", "created_at", "subject"],
                  detail=["subject"], title="open alerts")

    emit(doc, as_json, human)


def _known_user(conn, user_id: str) -> bool:
    """A user Ballast has seen: an account, a wallet change or a tier of theirs."""
    return bool(conn.execute(text(
        "SELECT EXISTS (SELECT 1 FROM accounts WHERE code LIKE :pattern) "
        "OR EXISTS (SELECT 1 FROM wallet_audit WHERE user_id = :u) "
        "OR EXISTS (SELECT 1 FROM user_tiers WHERE user_id = :u)"),
        {"pattern": f"user:{wallets._escape_like(user_id)}:%", "u": user_id}).scalar())


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
