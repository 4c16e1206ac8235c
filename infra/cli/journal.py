"""Payment matching views: ``ballast matching run|report``, ``ballast cycle show``."""

from __future__ import annotations


import click

from domain import request_ids
from domain.errors import InvalidCommand, NotFound
from domain.money import format_minor
from infra.cli import in_process
from infra.cli.output import (console, emit, fail, json_option, progress, record, table,
                              timestamp)
from infra.commands import send_command
from infra.contract import parse
from infra.contract.journal import ImportWalletJournal, MatchPayments
from infra.db.engine import get_read_engine
from infra.journal import views


def register(cli: click.Group) -> None:
    cli.add_command(matching_group)
    cli.add_command(cycle_group)
    cli.add_command(journal_group)


@click.group("journal")
def journal_group() -> None:
    """The wallet journal."""


@journal_group.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(1, 5000),
              help="Entries per import_wallet_journal command.")
@click.option("--request-id", "request_id", default=None,
              help="Prefix of the commands' request ids (default: from the file's content, so "
                   "importing the same file again changes nothing).")
@json_option
def journal_import(file, batch: int, request_id: str | None, as_json: bool) -> None:
    """Import wallet-journal entries from FILE (- for stdin): a JSON list of entries, or
    {"entries": [...]}, sent as import_wallet_journal commands of --batch entries each.

    Every batch is validated before the first is sent: a bad entry sends nothing.
    """
    import hashlib
    import json

    raw = file.read()
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        fail(f"{file.name}: not JSON: {exc}", 2)
    entries = doc.get("entries") if isinstance(doc, dict) else doc
    if not isinstance(entries, list) or not entries:
        fail(f"{file.name}: a JSON list of entries (or {{\"entries\": [...]}}) is needed", 2)
    prefix = request_id or "journal-import:" + hashlib.sha256(raw.encode()).hexdigest()[:16]
    batches = [entries[i:i + batch] for i in range(0, len(entries), batch)]
    commands = [{"request_id": f"{prefix}:{n + 1}of{len(batches)}", "entries": b}
                for n, b in enumerate(batches)]
    for n, kwargs in enumerate(commands):
        try:
            parse(ImportWalletJournal, kwargs)
        except InvalidCommand as exc:
            first = n * batch + 1
            fail(f"entries {first}-{first + len(batches[n]) - 1}: {exc}", 2)
    sent = []
    with progress("journal import", total=len(entries)) as advance:
        for kwargs in commands:
            msg = send_command("import_wallet_journal", kwargs)
            sent.append({"request_id": kwargs["request_id"], "message_id": msg.message_id,
                         "entries": len(kwargs["entries"])})
            advance(len(kwargs["entries"]))
    emit({"entries": len(entries), "commands": sent}, as_json, lambda d: (
        click.echo(f"sent {d['entries']} entries as {len(d['commands'])} "
                   "import_wallet_journal command(s)"),
        table(d["commands"], ["request_id", "message_id", "entries"])))


@click.group("matching")
def matching_group() -> None:
    """Match wallet-journal payments to cycle participations."""


@matching_group.command("run")
@click.option("--cycle", "cycle_id", default=None, help="Only link payments into this cycle.")
@json_option
def matching_run(cycle_id: str | None, as_json: bool) -> None:
    """Run the matching step now, in this process, and print its counts."""
    try:
        cmd = parse(MatchPayments, {"request_id": request_ids.fresh("cli", "matching"), "cycle_id": cycle_id})
    except InvalidCommand as exc:
        fail(str(exc), 2)
    try:  # the match_payments handler, through the contract (validated, claimed)
        with progress("matching") as advance:  # a bar on a terminal only (issue 17)
            result = in_process.call("match_payments", extras={"progress": advance},
                                    **cmd.model_dump(mode="json"))
    except NotFound as exc:
        fail(str(exc), 1)
    emit(result.as_dict(), as_json, lambda d: record(d, title="matching run"))


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
                                    "payer_character_id", "journal_ids"], title="participations", currency="ISK")
        table(d["ambiguous"], ["journal_id", "amount", "memo", "participation_ids", "score"],
              title="ambiguous (for review)", currency="ISK")
        table([{**u, "suggestions": ", ".join(
                   f"{s['participation_id']} ({'+'.join(s['reasons'])})" for s in u["suggestions"])}
               for u in d["unmatched"]],
              ["journal_id", "date", "amount", "memo", "payer_character_id",
               "near_participation_ids", "near_score", "suggestions"],
              title="unmatched (suggestions are for review, never applied)",
              currency="ISK")
        table([{**a, "age": f"{a['age_seconds'] // 3600} h"} for a in d["awaiting"]],
              ["participation_id", "cycle_id", "character_name", "pledged", "created_at", "age"],
              title="awaiting payment", currency="ISK")

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
            console.print(f"  closed at {timestamp(d['closed_at'])} by {d['closed_by']}, closing capital "
                          f"{format_minor(d['closing_capital'], 'ISK')}")

    emit(doc, as_json, human)
