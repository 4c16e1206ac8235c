"""CLI views of the markets capability: ``ballast market show ID`` (CONTRACT.md)."""

from __future__ import annotations

import click
from sqlalchemy import text

from domain.errors import NotFound
from domain.money import format_minor
from infra.cli.output import console, emit, fail, json_option, table
from infra.db.engine import get_engine
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
    with get_engine().connect() as conn:
        try:
            doc = repository.show(conn, market_id, line_limit)
        except NotFound as exc:
            fail(str(exc), 1)
        currency = conn.execute(text("SELECT currency FROM markets WHERE market_id = :m"),
                                {"m": market_id}).scalar_one()

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
        table(dist["lines"][:200], ["commitment_id", "user_id", "option_id", "method", "amount",
                                    "payout", "profit"], title="audit lines")
        if len(dist["lines"]) > 200:
            console.print(f"  … {len(dist['lines']) - 200} more (use --json)")

    emit(doc, as_json, human)
