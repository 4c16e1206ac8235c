"""Issue 14 on payment matching, on real PostgreSQL: closing a cycle, participations
awaiting payment with their age, ranked suggestions for payments without a usable memo."""

from __future__ import annotations

from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import text

import actors.journal as journal_actors
from domain.errors import Refused
from infra.cli import output
from infra.cli.main import cli
from infra.journal import repository as repo, views
from tests.steps import matching
from tests.harness import uid
from tests.infra.test_journal import LOGI, T0, balance, clean, entry, import_, make_cycle, run, work  # noqa: F401


def human(*args: str) -> str:
    """``ballast ARGS`` for people, on a wide console (rich wraps at 80 columns)."""
    width = output.console.width
    output.console.width = 500
    try:
        return CliRunner().invoke(cli, list(args)).output
    finally:
        output.console.width = width


def report(engine, cycle=None):
    with engine.connect() as conn:
        return views.report(conn, cycle)


def cycle_view(engine, cycle):
    with engine.connect() as conn:
        return views.cycle_view(conn, cycle)


def test_closing_a_cycle_reports_its_account_as_closing_capital_and_takes_nothing_after(engine, clean):
    cycle = make_cycle(engine, ("p1", "Alpha", 1_000), ("p2", "Beta", 2_000))
    import_(engine, entry("j1", 1_000, f"ARB {cycle} Alpha"))
    run(engine)
    with pytest.raises(Refused, match="only an open cycle is closed"):
        work(engine, fn=lambda uow: matching.close_cycle(uow, cycle, "ops-ada"))
    work(engine, fn=lambda uow: matching.open_cycle(uow, cycle))
    doc = work(engine, fn=lambda uow: matching.close_cycle(uow, cycle, "ops-ada"))
    assert (doc["initial_capital"], doc["closing_capital"]) == (1_000, 1_000)
    view = cycle_view(engine, cycle)
    assert (view["status"], view["closing_capital"], view["closed_by"]) == ("closed", 1_000, "ops-ada")
    assert view["closing_capital"] == balance(engine, f"cycle:{cycle}")
    assert view["closed_at"]
    shown = human("cycle", "show", cycle)
    assert "closing capital 10.00 ISK" in shown and "ops-ada" in shown
    # Closing again changes nothing; nothing is added or linked after the close.
    assert work(engine, fn=lambda uow: matching.close_cycle(uow, cycle, "someone")) is None
    assert cycle_view(engine, cycle)["closed_by"] == "ops-ada"
    with pytest.raises(Refused, match="closed, it takes no more participations"):
        journal_actors.create_participation.fn(request_id=uid("r"), participation_id=uid("p"),
                                               cycle_id=cycle, user_id="u", character_name="Gamma",
                                               amount=500)
    import_(engine, entry("j2", 2_000, f"ARB {cycle} Beta"))
    assert run(engine).as_dict()["matched"] == 0
    with pytest.raises(Refused, match="closed, no longer taking payments"):
        work(engine, fn=lambda uow: matching.link_by_hand(uow, "p1", "j2", "adm"))
    assert balance(engine, f"cycle:{cycle}") == 1_000
    with engine.connect() as conn:
        (body,) = conn.execute(text("SELECT body FROM outbox WHERE event_name = 'cycle.closed' "
                                    "AND body->'data'->>'cycle_id' = :c"), {"c": cycle}).scalars()
    assert body["recipient"] == "admin" and body["data"]["closing_capital"] == 1_000


def test_the_report_lists_participations_awaiting_payment_with_their_age(engine, clean):
    cycle = make_cycle(engine, ("a1", "Alpha", 1_000), ("a2", "Beta", 2_000), ("a3", "Gamma", 3_000))
    with engine.begin() as conn:  # a2 pledged two days ago
        conn.execute(text("UPDATE journal_participations SET created_at = now() - interval '2 days' "
                          "WHERE participation_id = 'a2'"))
    import_(engine, entry("j1", 1_000, f"ARB {cycle} Alpha"))
    run(engine)
    waiting = report(engine, cycle)["awaiting"]
    assert [w["participation_id"] for w in waiting] == ["a2", "a3"]  # oldest first, a1 paid
    assert waiting[0]["age_seconds"] >= 2 * 86_400 > waiting[1]["age_seconds"] >= 0
    assert waiting[0]["memo"] == f"ARB {cycle} Beta" and waiting[0]["pledged"] == 2_000


GAMMA_CHAR = 90_077  # the game's character ids are integers


def test_payments_without_a_usable_memo_get_ranked_suggestions_never_applied(engine, clean):
    cycle = make_cycle(engine, ("s1", "Alpha", 5_000), ("s2", "Beta", 5_000), ("s3", "Gamma", 7_000),
                       ("s4", "Delta", 9_000))
    with engine.begin() as conn:
        repo.register_character(conn, GAMMA_CHAR, "gamma", "USER")  # Gamma's own character
        conn.execute(text("UPDATE journal_participations SET created_at = :t "
                          "WHERE participation_id = 's1'"), {"t": T0 - timedelta(days=3)})
        conn.execute(text("UPDATE journal_participations SET created_at = :t "
                          "WHERE participation_id = 's2'"), {"t": T0 - timedelta(hours=1)})
        conn.execute(text("UPDATE journal_participations SET created_at = :t "
                          "WHERE participation_id = 's3'"), {"t": T0 - timedelta(days=9)})
    import_(engine,
            entry("n1", 5_000, "thanks", payer=70_077),  # same amount as s1 and s2
            entry("n2", 7_000, "", payer=GAMMA_CHAR),  # Gamma's character, Gamma's pledge
            entry("n3", 5_000, "for the op", payer=GAMMA_CHAR),  # same amount, or known payer
            entry("n4", 123, "???", payer=70_078))  # nothing fits
    tally = run(engine)
    assert tally.as_dict()["unmatched"] == 4
    got = {u["journal_id"]: u["suggestions"] for u in report(engine)["unmatched"]}
    # Same amount for both: the nearest date first.
    assert [(s["participation_id"], s["reasons"]) for s in got["n1"]] == \
        [("s2", ["same_amount"]), ("s1", ["same_amount"])]
    assert [(s["participation_id"], s["reasons"]) for s in got["n2"]] == \
        [("s3", ["same_amount", "known_payer"])]
    assert [s["participation_id"] for s in got["n3"]] == ["s2", "s1", "s3"]
    assert got["n3"][2]["reasons"] == ["known_payer"]
    assert got["n4"] == []
    shown = human("matching", "report")
    assert "s3 (same_amount+known_payer)" in shown and "awaiting payment" in shown
    # Suggestions are for review: nothing was linked, every participation still awaits.
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM journal_payment_links")).scalar_one() == 0
    assert {w["participation_id"] for w in report(engine, cycle)["awaiting"]} == {"s1", "s2", "s3", "s4"}
