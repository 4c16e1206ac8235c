"""Treasury balancing for operators: ``ballast challenge show|settle``, ``ballast treasury
dashboard``, ``ballast personas [list|add]`` (CONTRACT.md)."""

from __future__ import annotations

import click

from domain.challenges import PERSONA_CATEGORIES, format_amount
from domain.errors import BallastError, InvalidCommand, NotFound, Refused
from domain.money import CURRENCIES
from domain.request_ids import fresh
from infra.challenges import personas as persona_pool
from infra.challenges import views
from infra.cli import in_process
from infra.cli.output import console, emit, fail, json_option, table, timestamp
from infra.db.engine import get_read_engine


def register(cli: click.Group) -> None:
    """Add this capability's commands to `ballast`."""
    cli.add_command(challenge_group)
    cli.add_command(treasury_group)
    cli.add_command(personas_group)


@click.group("challenge")
def challenge_group() -> None:
    """Challenges balanced by the treasury."""


@challenge_group.command("show")
@click.argument("challenge_id")
@json_option
def challenge_show(challenge_id: str, as_json: bool) -> None:
    """Imbalance, treasury budget and treasury matches of one challenge."""
    with get_read_engine().connect() as conn:
        try:
            doc = views.show(conn, challenge_id)
        except NotFound as exc:
            fail(str(exc), 1)

    def human(d):
        cur = d["currency"]
        money = lambda n: format_amount(n, cur)  # noqa: E731
        console.print(f"[bold]{d['challenge_id']}[/bold] {d['title']!r} — {d['status']}"
                      + (f" ({d['result']})" if d["result"] else "")
                      + f", stake {money(d['stake'])}" + ("" if d["admin_created"] else ", user-created"))
        console.print(f"  YES {d['yes_count']} ({money(d['yes_total'])}), "
                      f"NO {d['no_count']} ({money(d['no_total'])}); gap {money(d['gap'])}"
                      f" on {d['imbalanced_side'] or 'neither side'}")
        console.print(f"  {d['user_count']} user(s); unmatched YES {d['unmatched_yes']}, "
                      f"NO {d['unmatched_no']}; match rate {d['match_rate']}%; "
                      f"potential matches {d['potential_matches']}, fillable now {d['fillable']}")
        limits = [f"closes at {timestamp(d['closes_at'])}" if d["closes_at"] else "no time limit",
                  f"at most {d['max_participants']} participants" if d["max_participants"]
                  else "no participant cap"]
        console.print("  " + ", ".join(limits))
        if d["settlement_failure"]:
            console.print(f"  [red]settlement failed[/red] at {timestamp(d['settlement_failed_at'])}: "
                          f"{d['settlement_failure']} (retry: ballast challenge settle "
                          f"{d['challenge_id']} --by NAME)")
        t = d["treasury"]
        console.print(f"  treasury: max risk {money(t['max_risk'])}, allocated {money(t['allocated'])}, "
                      f"remaining {money(t['remaining'])}, {t['filled_count']} match(es)")
        table(d["matches"], ["user_id", "persona", "user_side", "treasury_staked", "status", "result",
                             "treasury_payout", "pnl"], title="treasury matches", currency=cur,
              headers={"treasury_staked": "staked", "treasury_payout": "payout"})

    emit(doc, as_json, human)


@challenge_group.command("settle")
@click.argument("challenge_id")
@click.option("--by", "by", required=True, help="Who retries (recorded with the retry).")
@json_option
def challenge_settle(challenge_id: str, by: str, as_json: bool) -> None:
    """Retry a settlement that failed for good, once its cause is fixed: seats already
    paid are skipped, so nobody is paid twice.  The command ``retry_challenge_settlement``,
    run here (validated, claimed, committed)."""
    if not by.strip():
        fail("--by needs a name", 2)
    try:
        in_process.call("retry_challenge_settlement", request_id=fresh("cli", "challenge_settle"),
                        challenge_id=challenge_id, retried_by=by.strip())
    except InvalidCommand as exc:
        fail(str(exc), 2)
    except (NotFound, Refused) as exc:
        fail(str(exc), 1)
    emit({"challenge_id": challenge_id, "status": "resolved", "settlement": "retrying"}, as_json,
         lambda d: console.print(f"challenge {challenge_id}: settlement handed to the workers again"))


@click.group("treasury")
def treasury_group() -> None:
    """The treasury's stakes in challenges."""


@treasury_group.command("dashboard")
@click.option("--currency", default="NGN", show_default=True, type=click.Choice(sorted(CURRENCIES)),
              help="Amounts of one currency (they never add up across currencies).")
@json_option
def treasury_dashboard(currency: str, as_json: bool) -> None:
    """Allocation, matches, settlements pending, realized P&L and utilization."""
    with get_read_engine().connect() as conn:
        doc = views.dashboard(conn, currency)

    def human(d):
        money = lambda n: format_amount(n, currency)  # noqa: E731
        console.print(f"[bold]treasury dashboard[/bold] ({currency})")
        console.print(f"  allocated {money(d['total_allocated'])} on {d['active_challenges']} active "
                      f"challenge(s), utilization {d['utilization_percent']}%")
        console.print(f"  {d['total_matches']} match(es), {d['settlement_pending']} awaiting settlement")
        console.print(f"  realized net P&L {money(d['net_pnl'])}")
        table(d["recent_settlements"], title="recent settlements", currency=currency)
        others = [c for c in d["currencies"] if c != currency]
        if others:
            console.print(f"  [dim]also active in: {', '.join(others)} (--currency)[/dim]")

    emit(doc, as_json, human)


@click.group("personas", invoke_without_command=True)
@json_option
@click.pass_context
def personas_group(ctx: click.Context, as_json: bool) -> None:
    """The shadow persona pool (lists it without a subcommand)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(personas_list, as_json=as_json)


@personas_group.command("list")
@json_option
def personas_list(as_json: bool) -> None:
    """Every persona, its category and how many matches it played."""
    with get_read_engine().connect() as conn:
        rows = persona_pool.listing(conn)
    emit(rows, as_json, lambda d: table(d, ["code", "display_name", "category", "active", "matches"],
                                        title=f"{len(d)} personas"))


@personas_group.command("add")
@click.argument("code")
@click.option("--name", "display_name", required=True, help="What users see.")
@click.option("--category", required=True, type=click.Choice(PERSONA_CATEGORIES))
@json_option
def personas_add(code: str, display_name: str, category: str, as_json: bool) -> None:
    """Add a persona to the pool."""
    try:  # the add_persona command, run here; every refusal is bad input (exit 2)
        doc = in_process.call("add_persona", request_id=fresh("cli", "add_persona"),
                              code=code, display_name=display_name, category=category)
    except BallastError as exc:
        fail(str(exc), 2)
    emit(doc, as_json, lambda d: click.echo(f"persona {d['code']} ({d['category']}) added"))
