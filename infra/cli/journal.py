"""Payment matching views: ``ballast matching run|report``, ``ballast cycle show``."""

from __future__ import annotations

import uuid

import click

from domain.errors import InvalidCommand, NotFound
from domain.money import format_minor
from infra.cli.output import console, emit, fail, json_option, table
from infra.contract import parse
from infra.contract.journal import MatchPayments
from infra.db.engine import get_read_engine
from infra.journal import matching, views
from infra.uow import UnitOfWork


def register(cli: click.Group) -> None:
    cli.add_command(matching_group)
    cli.add_command(cycle_group)


@click.group("matching")
def matching_group() -> None:
    """Match wallet-journal payments to cycle participations."""


@matching_group.command("run")
@click.option("--cycle", "cycle_id", default=None, help="Only link payments into this cycle.")
@json_option
def matching_run(cycle_id: str | None, as_json: bool) -> None:
    """Run the matching step now, in this process, and print its counts."""
    try:
        cmd = parse(MatchPayments, {"request_id": f"cli:{uuid.uuid4()}", "cycle_id": cycle_id})
    except InvalidCommand as exc:
        fail(str(exc), 2)
    with UnitOfWork(actor="match_payments", request_id=cmd.request_id, payload=cmd) as uow:
        uow.claim()
        try:
            result = matching.run(uow, cmd.cycle_id)
        except NotFound as exc:
            fail(str(exc), 1)
        uow.commit()
    emit(result.as_dict(), as_json,
         lambda d: console.print("  ".join(f"{k} [bold]{v}[/bold]" for k, v in d.items())))


@matching_group.command("report")
@click.option("--cycle", "cycle_id", default=None, help="Only this cycle's participations.")
@json_option
def matching_report(cycle_id: str | None, as_json: bool) -> None:
    """Participations and their payments; payments unmatched or left for review."""
    with get_read_engine().connect() as conn:
        try:
            doc = views.report(conn, cycle_id)
        except NotFound as exc:
            fail(str(exc), 1)

    def human(d):
        table(d["participations"], ["participation_id", "cycle_id", "character_name", "status",
                                    "pledged", "amount", "payment", "match_type",
                                    "payer_character_id", "journal_ids"], title="participations")
        table(d["ambiguous"], ["journal_id", "amount", "memo", "participation_ids", "score"],
              title="ambiguous (for review)")
        table([{**u, "suggestions": ", ".join(
                   f"{s['participation_id']} ({'+'.join(s['reasons'])})" for s in u["suggestions"])}
               for u in d["unmatched"]],
              ["journal_id", "date", "amount", "memo", "payer_character_id",
               "near_participation_ids", "near_score", "suggestions"],
              title="unmatched (suggestions are for review, never applied)")
        table([{**a, "age": f"{a['age_seconds'] // 3600} h"} for a in d["awaiting"]],
              ["participation_id", "cycle_id", "character_name", "pledged", "created_at", "age"],
              title="awaiting payment")

    emit(doc, as_json, human)


@click.group("cycle")
def cycle_group() -> None:
    """Investment cycles."""


@cycle_group.command("show")
@click.argument("cycle_id")
@json_option
def cycle_show(cycle_id: str, as_json: bool) -> None:
    """Status, participations, confirmed amount and initial capital of a cycle."""
    with get_read_engine().connect() as conn:
        try:
            doc = views.cycle_view(conn, cycle_id)
        except NotFound as exc:
            fail(str(exc), 1)

    def human(d):
        capital = "-" if d["initial_capital"] is None else format_minor(d["initial_capital"], "ISK")
        console.print(f"[bold]{d['cycle_id']}[/bold] {d['status']}: {d['participations']} "
                      f"participations {d['by_status']}, confirmed "
                      f"{format_minor(d['confirmed_amount'], 'ISK')}, initial capital {capital}")
        if d["closing_capital"] is not None:
            console.print(f"  closed at {d['closed_at']} by {d['closed_by']}, closing capital "
                          f"{format_minor(d['closing_capital'], 'ISK')}")

    emit(doc, as_json, human)
