"""CLI views of the markets capability: ``ballast market show ID``, ``ballast market settle ID``
(CONTRACT.md)."""

from __future__ import annotations

import click

from domain.errors import InvalidCommand, NotFound, Refused
from domain.money import format_minor
from domain.request_ids import fresh
from infra.cli import in_process
from infra.cli.output import console, emit, fail, json_option, table
from infra.db.engine import get_read_engine
from infra.markets import repository


def register(cli: click.Group) -> None:
    """Add this capability's commands to `ballast`."""
    cli.add_command(market_group)


@click.group("market")
def market_group() -> None:
    """Parimutuel markets and their payout distributions."""


@market_group.command("show")
@click.argument("market_id")
@click.option("--lines", "line_limit", type=click.IntRange(0, None), default=None,
              help="At most this many audit lines (default: all).")
@json_option
def market_show(market_id: str, line_limit: int | None, as_json: bool) -> None:
    """The market, its pool and its latest distribution with one audit line per commitment."""
    with get_read_engine().connect() as conn:
        try:
            doc = repository.show(conn, market_id, line_limit)
        except NotFound as exc:
            fail(str(exc), 1)
        currency = repository.currency(conn, market_id)

    def human(d):
        console.print(f"[bold]market {d['market_id']}[/bold] {d['status']}, "
                      f"pool {format_minor(d['pool'], currency)}")
        dist = d["distribution"]
        if dist is None:
            console.print("  not resolved yet")
            return
        fees = " ".join(f"{k.replace('_', ' ')} {format_minor(dist[k], currency)}"
                        for k in ("house_fee", "creator_fee", "breakage") if dist[k] is not None)
        console.print(f"  distribution {dist['status']} {fees}")
        if dist["failure"]:
            console.print(f"  [red]failure[/red]: {dist['failure']}"
                          + ("" if dist["status"] != "failed" else
                             f" (retry: ballast market settle {d['market_id']} --by NAME)"))
        dispute = d.get("dispute")
        if dispute:
            ended = (f", {dispute['status']} by {dispute['ended_by']}: {dispute['end_note'] or '-'}"
                     if dispute["status"] != "open" else ", open")
            again = (f", re-resolved as {dispute['reresolved_outcome']}"
                     if dispute["reresolved_outcome"] else "")
            console.print(f"  dispute {dispute['dispute_id']} by {dispute['disputed_by']}: "
                          f"{dispute['reason']!r}{ended}{again}")
        table(dist["lines"][:200], ["commitment_id", "user_id", "option_id", "method", "amount",
                                    "payout", "profit"], title="audit lines", currency=currency)
        if len(dist["lines"]) > 200:
            console.print(f"  … {len(dist['lines']) - 200} more (use --json)")

    emit(doc, as_json, human)


@market_group.command("settle")
@click.argument("market_id")
@click.option("--by", "by", required=True, help="Who retries (recorded on the distribution).")
@json_option
def market_settle(market_id: str, by: str, as_json: bool) -> None:
    """Retry a settlement that failed, once its cause is fixed: the distribution is pending
    again and the settlement step pays it once (one transaction; paying twice is impossible).
    The command ``retry_market_settlement``, run here (validated, claimed, committed)."""
    if not by.strip():
        fail("--by needs a name", 2)
    try:
        dist = in_process.call("retry_market_settlement", request_id=fresh("cli", "market_settle"),
                               market_id=market_id, retried_by=by.strip())
    except InvalidCommand as exc:
        fail(str(exc), 2)
    except (NotFound, Refused) as exc:
        fail(str(exc), 1)
    emit({"market_id": market_id, "distribution_id": dist, "status": "settling"}, as_json,
         lambda d: console.print(f"market {market_id}: distribution {dist} handed to the "
                                 "settlement step again"))
