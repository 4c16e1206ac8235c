"""Payment matching on real PostgreSQL: import, the matching run, admin links, opening a cycle,
the unmatched-payments alert (SPEC §5)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from domain.errors import NotFound, Refused
from infra import ledger
from services.conditions import CONDITIONS
from infra.contract.journal import JournalEntry
from infra.journal import repository as repo, views
from tests.steps import matching
from infra.uow import UnitOfWork
from tests.harness import uid

# Character and party ids are the game's integers (CONTRACT.md, "Identifiers").
LOGI, USER_CHAR, PAYER, HANKS_ALT = 90001, 90002, 70001, 70002
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def clean(engine, empty_journal):
    """An empty journal with one LOGISTICS and one USER character."""
    with engine.begin() as conn:
        repo.register_character(conn, LOGI, "Logistics One", "LOGISTICS")
        repo.register_character(conn, USER_CHAR, "Some Pilot", "USER")
    yield


def work(engine, actor="test", fn=None, rid=None):
    with UnitOfWork(actor=actor, request_id=rid or uid("r"), payload={}, engine=engine) as uow:
        assert uow.claim()
        out = fn(uow)
        uow.commit()
    return out


def make_cycle(engine, *participations):
    """A planned cycle with participations ``(participation_id, character_name, pledged)``."""
    cycle = uid("c")

    def body(uow):
        repo.plan_cycle(uow.conn, cycle)
        for pid, name, pledged in participations:
            repo.create_participation(uow.conn, pid, cycle, f"user-{pid}", name, pledged)

    work(engine, fn=body)
    return cycle


def entry(jid, amount, memo, *, char=LOGI, payer=PAYER, ref_type="player_donation", date=T0):
    return JournalEntry(journal_id=jid, character_id=char, date=date, ref_type=ref_type,
                        amount=amount, reason=memo, first_party_id=payer, second_party_id=char)


def import_(engine, *entries):
    return work(engine, fn=lambda uow: repo.import_entries(uow.conn, entries, uow.request_id))


def run(engine, cycle=None):
    return work(engine, "match_payments", lambda uow: matching.run(uow, cycle))


def part(engine, pid):
    with engine.connect() as conn:
        return repo.participation(conn, pid)


def links(engine, where="true", **params):
    with engine.connect() as conn:
        return {r.journal_id: r for r in conn.execute(
            text(f"SELECT * FROM journal_payment_links WHERE {where}"), params)}


def balance(engine, code):
    with engine.connect() as conn:
        return ledger.balances(conn, [code]).get(code, 0)


def ledger_ok(engine):
    with engine.connect() as conn:
        return ledger.check(conn)["ok"]


def test_every_class_of_payment_in_one_run(engine, clean):
    ps = {"alice": 10_000, "bob": 20_000, "carol": 30_000, "dave": 40_000, "erin": 50_000,
          "frank": 10_000, "gina": 30_000, "hank": 10_000, "ivan": 10_000}
    cycle = make_cycle(engine, *((f"p-{n}", n.capitalize(), amt) for n, amt in ps.items()))
    memo = lambda name: f"ARB {cycle} {name}"  # noqa: E731
    import_(
        engine,
        entry("j-exact", 10_000, memo("Alice")),
        entry("j-contains", 20_000, f"for {memo('Bob')} - thanks"),
        entry("j-fuzzy", 30_000, memo("Carlo")),  # 2 edits, the pledged amount
        entry("j-fuzzy-wrong", 39_999, memo("Daev")),  # 2 edits, another amount
        entry("j-partial", 20_000, memo("Erin")),
        entry("j-over", 15_000, memo("Frank")),
        entry("j-several-1", 10_000, memo("Gina"), date=T0),
        entry("j-several-2", 20_000, memo("Gina"), date=T0 + timedelta(hours=1)),
        entry("j-other-payer", 10_000, memo("Hank"), payer=HANKS_ALT),
        entry("j-no-memo", 10_000, ""),
        entry("j-to-user", 10_000, memo("Ivan"), char=USER_CHAR),
        entry("j-not-donation", 10_000, memo("Ivan"), ref_type="bounty_prizes"),
        entry("j-paid-out", -10_000, memo("Ivan")),
    )
    counts = run(engine)
    assert counts.as_dict() == {"matched": 6, "partial": 1, "over": 1, "ambiguous": 0, "unmatched": 2}

    linked = links(engine)
    assert {j: (lk.participation_id, lk.match_type) for j, lk in linked.items()} == {
        "j-exact": ("p-alice", "auto_exact"),
        "j-contains": ("p-bob", "auto_contains"),
        "j-fuzzy": ("p-carol", "auto_fuzzy"),
        "j-partial": ("p-erin", "auto_exact"),
        "j-over": ("p-frank", "auto_exact"),
        "j-several-1": ("p-gina", "auto_exact"),
        "j-several-2": ("p-gina", "auto_exact"),
        "j-other-payer": ("p-hank", "auto_exact"),
    }
    assert linked["j-fuzzy"].score == 130 and linked["j-exact"].score == 1050
    assert part(engine, "p-dave").status == "AWAITING_INVESTMENT"
    assert part(engine, "p-ivan").status == "AWAITING_INVESTMENT"
    erin, frank, gina, hank = (part(engine, f"p-{n}") for n in ("erin", "frank", "gina", "hank"))
    assert (erin.status, erin.amount, erin.pledged) == ("OPTED_IN", 20_000, 50_000)
    assert (frank.amount, gina.amount) == (15_000, 30_000)
    assert hank.payer_character_id == str(HANKS_ALT) and erin.payer_character_id == str(PAYER)
    assert hank.validated_at is not None and hank.match_type == "auto_exact"
    received = sum(lk.amount for lk in linked.values())
    assert balance(engine, f"cycle:{cycle}") == received == 135_000
    assert ledger_ok(engine)

    with engine.connect() as conn:
        doc = views.report(conn, cycle)
    rows = {p["participation_id"]: p for p in doc["participations"]}
    assert rows["p-gina"]["journal_ids"] == ["j-several-1", "j-several-2"]
    assert (rows["p-erin"]["payment"], rows["p-frank"]["payment"], rows["p-alice"]["payment"]) == (
        "partial", "over", "exact")
    assert set(rows["p-alice"]) >= {"participation_id", "status", "amount", "pledged",
                                    "payer_character_id", "journal_ids", "match_type"}
    unmatched = {u["journal_id"]: u for u in doc["unmatched"]}
    assert set(unmatched) == {"j-fuzzy-wrong", "j-no-memo"}  # the others are no payments at all
    assert unmatched["j-fuzzy-wrong"]["near_participation_ids"] == ["p-dave"]
    assert unmatched["j-fuzzy-wrong"]["near_score"] == 80
    assert doc["ambiguous"] == []


def test_reimported_journal_changes_nothing(engine, clean):
    cycle = make_cycle(engine, ("p-a", "A", 500))
    assert import_(engine, entry("j1", 500, f"ARB {cycle} A"), entry("j2", 7, "x")) == 2
    run(engine)
    # the same ids again, one with other contents: nothing is inserted or changed
    assert import_(engine, entry("j1", 999, f"ARB {cycle} A"), entry("j2", 7, "x")) == 0
    assert run(engine).matched == 0
    with engine.connect() as conn:
        assert conn.execute(text("SELECT amount FROM journal_entries WHERE journal_id = 'j1'")).scalar() == 500
    assert part(engine, "p-a").amount == 500
    assert balance(engine, f"cycle:{cycle}") == 500


def test_matching_twice_links_nothing_twice(engine, clean):
    cycle = make_cycle(engine, ("p-a", "A", 500), ("p-b", "B", 700))
    import_(engine, entry("j1", 500, f"ARB {cycle} A"), entry("j2", 300, f"ARB {cycle} B"))
    assert run(engine).as_dict()["matched"] + run(engine).partial == 1 + 0
    assert run(engine).as_dict() == {"matched": 0, "partial": 0, "over": 0, "ambiguous": 0,
                                     "unmatched": 0}
    assert len(links(engine)) == 2
    assert balance(engine, f"cycle:{cycle}") == 800
    # a top-up arrives later and is added, once
    import_(engine, entry("j3", 400, f"ARB {cycle} B"))
    assert run(engine).matched == 1 and run(engine).matched == 0
    assert part(engine, "p-b").amount == 700 and balance(engine, f"cycle:{cycle}") == 1_200
    assert ledger_ok(engine)


def test_payment_fitting_two_participations_is_never_linked_to_both(engine, clean):
    cycle = make_cycle(engine, ("p-x", "Twin", 1_000), ("p-y", "Twin", 1_000), ("p-z", "Zed", 50))
    import_(engine,
            entry("j-tie", 1_000, f"ARB {cycle} Twin"),
            entry("j-two", 50, f"ARB {cycle} Twin / ARB {cycle} Zed"))
    counts = run(engine)
    assert (counts.ambiguous, counts.matched) == (1, 1)
    assert links(engine) .keys() == {"j-two"}  # best score (amount) wins; the tie is left alone
    assert links(engine)["j-two"].participation_id == "p-z"
    with engine.connect() as conn:
        doc = views.report(conn, cycle)
    assert [(a["journal_id"], a["participation_ids"]) for a in doc["ambiguous"]] == [
        ("j-tie", ["p-x", "p-y"])]
    assert {p["participation_id"]: p["status"] for p in doc["participations"]}["p-x"] == \
        "AWAITING_INVESTMENT"


def test_two_runs_at_once_link_each_payment_once(engine, clean):
    n = 40
    cycle = make_cycle(engine, *((f"p{i}", f"Pilot {i}", 100) for i in range(n)))
    import_(engine, *(entry(f"j{i}", 100, f"ARB {cycle} Pilot {i}") for i in range(n)))
    results, errors, go = [], [], threading.Barrier(3)

    def one():
        go.wait()
        try:
            results.append(run(engine))
        except Exception as exc:  # pragma: no cover - the failure this test is about
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(r.matched for r in results) == [0, 0, n]
    assert len(links(engine)) == n
    assert balance(engine, f"cycle:{cycle}") == 100 * n
    assert ledger_ok(engine)


def test_run_for_one_cycle_links_only_into_it_but_scores_against_all(engine, clean):
    c1 = make_cycle(engine, ("p-1", "Ann", 100))
    c2 = make_cycle(engine, ("p-2", "Ann", 100))
    import_(engine, entry("j1", 100, f"ARB {c1} Ann"), entry("j2", 100, f"ARB {c2} Ann"))
    assert run(engine, c1).matched == 1
    assert {j: lk.participation_id for j, lk in links(engine).items()} == {"j1": "p-1"}
    with pytest.raises(NotFound):
        run(engine, "no-such-cycle")


def test_admin_links_a_payment_by_hand_with_the_same_rules(engine, clean):
    cycle = make_cycle(engine, ("p-a", "A", 500), ("p-b", "B", 500))
    import_(engine,
            entry("j-odd", 500, "from my alt"),
            entry("j-user", 500, "x", char=USER_CHAR),
            entry("j-bounty", 500, "x", ref_type="bounty_prizes"),
            entry("j-exact", 500, f"ARB {cycle} B"))
    link = lambda pid, jid: work(engine, "link_payment",  # noqa: E731
                                 lambda uow: matching.link_by_hand(uow, pid, jid, "admin-7"))
    link("p-a", "j-odd")
    lk = links(engine)["j-odd"]
    assert (lk.match_type, lk.performed_by, lk.score) == ("manual", "admin-7", None)
    assert (part(engine, "p-a").status, part(engine, "p-a").amount) == ("OPTED_IN", 500)
    with pytest.raises(Refused, match="already linked"):
        link("p-b", "j-odd")
    with pytest.raises(Refused, match="USER character"):
        link("p-b", "j-user")
    with pytest.raises(Refused, match="bounty_prizes"):
        link("p-b", "j-bounty")
    with pytest.raises(NotFound):
        link("p-b", "j-nothing")
    with pytest.raises(NotFound):
        link("p-nobody", "j-exact")
    run(engine)
    with pytest.raises(Refused, match="already linked"):
        link("p-a", "j-exact")
    work(engine, "open_cycle", lambda uow: matching.open_cycle(uow, cycle))
    import_(engine, entry("j-late", 100, "late"))
    with pytest.raises(Refused, match="cycle is open"):
        link("p-a", "j-late")
    assert balance(engine, f"cycle:{cycle}") == 1_000
    assert ledger_ok(engine)


def test_opening_a_cycle_expires_unpaid_participations_and_reports_capital(engine, clean):
    cycle = make_cycle(engine, ("p-paid", "Paid", 300), ("p-late", "Late", 300),
                       ("p-none", "None", 300))
    import_(engine, entry("j1", 300, f"ARB {cycle} Paid"))
    run(engine)
    import_(engine, entry("j2", 250, f"ARB {cycle} Late"))  # not matched yet: opening matches it
    opened = work(engine, "open_cycle", lambda uow: matching.open_cycle(uow, cycle))
    assert (opened["initial_capital"], opened["participants"], opened["expired"]) == (550, 2, 1)
    assert part(engine, "p-none").status == "EXPIRED"  # kept, out of the capital
    with engine.connect() as conn:
        view = views.cycle_view(conn, cycle)
    assert {k: view[k] for k in ("cycle_id", "status", "participations", "confirmed_amount",
                                 "initial_capital")} == {
        "cycle_id": cycle, "status": "open", "participations": 3, "confirmed_amount": 550,
        "initial_capital": 550}
    assert view["by_status"] == {"EXPIRED": 1, "OPTED_IN": 2}
    assert balance(engine, f"cycle:{cycle}") == 550
    # an open cycle takes no more payments, even by the same memo
    import_(engine, entry("j3", 300, f"ARB {cycle} None"))
    assert run(engine).matched == 0
    assert work(engine, "open_cycle", lambda uow: matching.open_cycle(uow, cycle)) is None


def test_payments_unmatched_for_more_than_a_day_raise_one_alert_until_linked(engine, clean):
    make_cycle(engine, ("p-a", "A", 500))
    now = datetime.now(timezone.utc)
    import_(engine, entry("j-old", 500, "no idea", date=now - timedelta(days=2)),
            entry("j-new", 500, "no idea either", date=now - timedelta(hours=2)),
            entry("j-user", 500, "not ours", char=USER_CHAR, date=now - timedelta(days=3)))
    check = CONDITIONS["unmatched_payments"]

    def open_alert():
        with engine.connect() as conn:
            return conn.execute(text(
                "SELECT * FROM alerts WHERE dedupe_key = 'journal:unmatched_payments' "
                "AND status <> 'resolved'")).one_or_none()

    work(engine, "evaluate_alerts", check)
    alert = open_alert()
    assert alert is not None and alert.data["journal_ids"] == ["j-old"]
    assert alert.kind == "unmatched_payments" and alert.data["amount"] == 500
    work(engine, "evaluate_alerts", check)  # still one alert
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alerts WHERE dedupe_key = "
                                 "'journal:unmatched_payments' AND status <> 'resolved'")).scalar() == 1
    work(engine, "link_payment", lambda uow: matching.link_by_hand(uow, "p-a", "j-old", "admin"))
    work(engine, "evaluate_alerts", check)
    assert open_alert() is None
