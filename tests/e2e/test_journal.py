"""Payment matching through real RabbitMQ, PostgreSQL and worker processes (issue 7)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from infra import rabbit
from tests.harness import ROOT, send, uid, wait_quiet, wait_until

pytestmark = pytest.mark.e2e

T0 = datetime(2024, 6, 1, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def clean(empty_journal):
    yield


def ballast(env, *args, code=0):
    out = subprocess.run([sys.executable, "-m", "infra.cli.main", *args, "--json"], cwd=ROOT,
                         env=env.environ(), capture_output=True, text=True, timeout=120)
    assert out.returncode == code, out.stderr
    return json.loads(out.stdout) if out.stdout.strip() else None


# Character and party ids are the game's integers (CONTRACT.md, "Identifiers").
LOGI, PILOT, PAYER, HANKS_ALT = 9001, 9002, 7001, 7002


def entry(jid, amount, memo, *, char=LOGI, payer=PAYER, ref_type="player_donation", date=T0):
    return {"journal_id": jid, "character_id": char, "date": date.isoformat(), "ref_type": ref_type,
            "amount": amount, "reason": memo, "first_party_id": payer, "second_party_id": char}


def setup_cycle(env, cycle, pledges):
    send(env, "register_character", request_id=uid("r"), character_id=LOGI, name="Logi",
         role="LOGISTICS")
    send(env, "register_character", request_id=uid("r"), character_id=PILOT, name="Pilot",
         role="USER")
    send(env, "plan_cycle", request_id=uid("r"), cycle_id=cycle)
    wait_quiet(env)
    for name, amount in pledges.items():
        send(env, "create_participation", request_id=uid("r"), participation_id=f"p-{name}",
             cycle_id=cycle, user_id=f"u-{name}", character_name=name.capitalize(), amount=amount)
    wait_quiet(env)


def linked(engine):
    with engine.connect() as conn:
        return {r.journal_id: (r.participation_id, r.match_type) for r in conn.execute(
            text("SELECT journal_id, participation_id, match_type FROM journal_payment_links"))}


def dead(env, actor):
    return [d.summary() for d in rabbit.list_dead_letters(None, 1000, env.broker_url)
            if d.body.get("actor_name") == actor]


def test_payments_of_every_class_matched_after_import_through_the_workers(env, engine, worker,
                                                                          events, clean):
    cycle = uid("cyc")
    pledges = {"alice": 10_000, "bob": 20_000, "carol": 30_000, "dave": 40_000, "erin": 50_000,
               "frank": 10_000, "gina": 30_000, "hank": 10_000, "ivan": 10_000,
               "twin": 5_000}
    setup_cycle(env, cycle, pledges)
    send(env, "create_participation", request_id=uid("r"), participation_id="p-twin-2",
         cycle_id=cycle, user_id="u-twin-2", character_name="Twin", amount=5_000)
    memo = lambda name: f"ARB {cycle} {name}"  # noqa: E731
    batch = [
        entry("j-exact", 10_000, memo("Alice")),
        entry("j-contains", 20_000, f"pay {memo('Bob')}!"),
        entry("j-fuzzy", 30_000, memo("Carlo")),
        entry("j-fuzzy-wrong", 12_345, memo("Daev")),
        entry("j-partial", 10_000, memo("Erin")),
        entry("j-over", 12_000, memo("Frank")),
        entry("j-several-1", 10_000, memo("Gina")),
        entry("j-several-2", 20_000, memo("Gina"), date=T0 + timedelta(minutes=5)),
        entry("j-other-payer", 10_000, memo("Hank"), payer=HANKS_ALT),
        entry("j-no-memo", 10_000, ""),
        entry("j-to-user", 10_000, memo("Ivan"), char=PILOT),
        entry("j-not-donation", 10_000, memo("Ivan"), ref_type="corporation_account_withdrawal"),
        entry("j-tie", 5_000, memo("Twin")),
    ]
    wait_quiet(env)
    send(env, "import_wallet_journal", request_id=uid("imp"), entries=batch)
    expected = {
        "j-exact": ("p-alice", "auto_exact"), "j-contains": ("p-bob", "auto_contains"),
        "j-fuzzy": ("p-carol", "auto_fuzzy"), "j-partial": ("p-erin", "auto_exact"),
        "j-over": ("p-frank", "auto_exact"), "j-several-1": ("p-gina", "auto_exact"),
        "j-several-2": ("p-gina", "auto_exact"), "j-other-payer": ("p-hank", "auto_exact"),
    }
    wait_until(lambda: linked(engine) == expected, 60, what="the import's matching run")
    wait_quiet(env)

    report = ballast(env, "matching", "report", "--cycle", cycle)
    rows = {p["participation_id"]: p for p in report["participations"]}
    assert rows["p-gina"]["amount"] == 30_000 and rows["p-gina"]["journal_ids"] == [
        "j-several-1", "j-several-2"]
    assert (rows["p-erin"]["amount"], rows["p-erin"]["pledged"]) == (10_000, 50_000)
    assert rows["p-hank"]["payer_character_id"] == HANKS_ALT  # an integer, as declared
    assert rows["p-dave"]["status"] == rows["p-ivan"]["status"] == "AWAITING_INVESTMENT"
    assert {u["journal_id"] for u in report["unmatched"]} == {"j-fuzzy-wrong", "j-no-memo"}
    assert [(a["journal_id"], a["participation_ids"]) for a in report["ambiguous"]] == [
        ("j-tie", ["p-twin", "p-twin-2"])]

    matched = wait_until(lambda: len(events.named("payment.matched")) >= 8 and events.seen,
                         what="payment.matched events")
    got = {e["data"]["journal_id"]: e for e in matched if e["event"] == "payment.matched"}
    assert set(got) == set(expected)
    assert got["j-partial"]["recipient"] == "u-erin" and got["j-partial"]["data"]["state"] == "partial"
    assert got["j-over"]["data"]["state"] == "over"

    # the journal imported again, then matching run twice more: nothing changes
    send(env, "import_wallet_journal", request_id=uid("imp"), entries=batch)
    send(env, "match_payments", request_id=uid("m"))
    send(env, "match_payments", request_id=uid("m"), cycle_id=cycle)
    wait_quiet(env)
    assert linked(engine) == expected
    assert ballast(env, "matching", "run") == {"matched": 0, "partial": 0, "over": 0,
                                               "ambiguous": 1, "unmatched": 2}
    shown = ballast(env, "cycle", "show", cycle)
    assert {k: shown[k] for k in ("cycle_id", "status", "participations", "confirmed_amount",
                                  "initial_capital")} == {
        "cycle_id": cycle, "status": "planned", "participations": 11,
        "confirmed_amount": 122_000, "initial_capital": None}
    assert ballast(env, "ledger", "balance", f"cycle:{cycle}")["balance"] == 122_000
    assert ballast(env, "ledger", "check")["ok"] is True


def test_admin_link_and_opening_the_cycle_through_the_workers(env, engine, worker, events, clean):
    cycle = uid("cyc")
    setup_cycle(env, cycle, {"anna": 7_000, "boris": 8_000, "cleo": 9_000})
    send(env, "import_wallet_journal", request_id=uid("imp"), entries=[
        entry("j-anna", 7_000, f"ARB {cycle} Anna"),
        entry("j-typo", 1_000, "for boris, sorry no memo"),
        entry("j-user", 8_000, f"ARB {cycle} Boris", char=PILOT),
    ])
    wait_until(lambda: "j-anna" in linked(engine), what="anna's payment")
    rid = uid("link")
    send(env, "link_payment", request_id=rid, participation_id="p-boris", journal_id="j-typo",
         admin_id="ops-ann")
    bad = uid("link")
    send(env, "link_payment", request_id=bad, participation_id="p-cleo", journal_id="j-user",
         admin_id="ops-ann")
    wait_until(lambda: "j-typo" in linked(engine), what="the admin's link")
    assert linked(engine)["j-typo"] == ("p-boris", "manual")
    letter = wait_until(lambda: [d for d in dead(env, "link_payment") if d["request_id"] == bad])
    assert "USER character" in letter[0]["reason"]

    send(env, "open_cycle", request_id=uid("open"), cycle_id=cycle)
    opened = wait_until(lambda: [e for e in events.named("cycle.opened")
                                 if e["data"]["cycle_id"] == cycle], what="cycle.opened")
    assert opened[0]["data"]["initial_capital"] == 8_000
    assert (opened[0]["data"]["participants"], opened[0]["data"]["expired"]) == (2, 1)
    shown = ballast(env, "cycle", "show", cycle)
    assert (shown["status"], shown["participations"], shown["confirmed_amount"],
            shown["initial_capital"]) == ("open", 3, 8_000, 8_000)
    report = ballast(env, "matching", "report", "--cycle", cycle)
    assert {p["participation_id"]: p["status"] for p in report["participations"]} == {
        "p-anna": "OPTED_IN", "p-boris": "OPTED_IN", "p-cleo": "EXPIRED"}
    ballast(env, "cycle", "show", "no-such-cycle", code=1)


def test_concurrent_matching_runs_link_each_payment_once(env, engine, worker, clean):
    cycle = uid("cyc")
    n = 300
    setup_cycle(env, cycle, {f"pilot{i}": 100 + i for i in range(n)})
    send(env, "import_wallet_journal", request_id=uid("imp"), entries=[
        entry(f"j{i}", 100 + i, f"ARB {cycle} Pilot{i}") for i in range(n)])
    # the import's own run, four more from the queue, and two from operators, all at once
    for _ in range(4):
        send(env, "match_payments", request_id=uid("m"))
    outs = []
    ops = [threading.Thread(target=lambda: outs.append(ballast(env, "matching", "run")))
           for _ in range(2)]
    for t in ops:
        t.start()
    for t in ops:
        t.join(120)
    wait_quiet(env)
    assert len(linked(engine)) == n
    with engine.connect() as conn:
        per_payment = conn.execute(text(
            "SELECT count(*) FROM journal_payment_links GROUP BY journal_id HAVING count(*) > 1"
        )).all()
    assert per_payment == []
    assert ballast(env, "ledger", "balance", f"cycle:{cycle}")["balance"] == sum(
        100 + i for i in range(n))
    assert not dead(env, "match_payments")
    assert len(outs) == 2


def test_demo_chapter_shows_every_class_and_opens_the_cycle(env, engine, worker, clean):
    from infra.broker import build_broker
    from infra.demo import journal as chapter
    from infra.demo.context import DemoContext

    broker = build_broker(env.broker_url)
    try:
        ctx = DemoContext(engine, broker, as_json=True)
        chapter.run(ctx)
    finally:
        broker.close()
    views = ctx.report["journal"]["views"]
    assert views["cycle show"]["initial_capital"] == 1_749_900  # 17,499.00 ISK
    assert views["cycle show"]["by_status"] == {"EXPIRED": 3, "OPTED_IN": 8}
    assert views["cycle show"]["account_balance"] == 1_749_900
    report = views["matching report --cycle (this run's payments)"]
    assert len(report["ambiguous"]) == 1 and len(report["unmatched"]) == 1
    types = {p["match_type"] for p in report["participations"]}
    assert types == {"auto_exact", "auto_contains", "auto_fuzzy", "manual", None}


def test_payment_unmatched_for_a_day_raises_an_alert_in_the_sweep_until_linked(env, engine, worker,
                                                                               events, clean):
    cycle = uid("cyc")
    setup_cycle(env, cycle, {"olga": 9_000})
    old = datetime.now(timezone.utc) - timedelta(days=2)
    send(env, "import_wallet_journal", request_id=uid("imp"), entries=[
        entry("j-old", 9_000, "olga's money, no memo", date=old)])

    def alert():
        with engine.connect() as conn:
            return conn.execute(text(
                "SELECT * FROM alerts WHERE dedupe_key = 'journal:unmatched_payments' "
                "AND status <> 'resolved'")).one_or_none()

    send(env, "evaluate_alerts", request_id=uid("sweep"))
    raised = wait_until(alert, what="the unmatched-payments alert")
    assert raised.data["journal_ids"] == ["j-old"] and raised.kind == "unmatched_payments"
    wait_until(lambda: [e for e in events.named("alert.raised")
                        if e["data"]["dedupe_key"] == "journal:unmatched_payments"])
    send(env, "link_payment", request_id=uid("link"), participation_id="p-olga", journal_id="j-old",
         admin_id="ops")
    wait_until(lambda: "j-old" in linked(engine), what="the admin's link")
    send(env, "evaluate_alerts", request_id=uid("sweep"))
    wait_until(lambda: alert() is None, what="the alert to resolve")


def test_import_crashing_after_commit_loses_no_handoff_and_links_once(env, engine, clean_queues,
                                                                      clean):
    from tests.harness import Worker

    cycle = uid("cyc")
    w = Worker(env, threads=4).start()
    try:
        setup_cycle(env, cycle, {"nina": 4_000, "omar": 5_000})
    finally:
        w.stop()
    batch = [entry("j-nina", 4_000, f"ARB {cycle} Nina"), entry("j-omar", 5_000, f"ARB {cycle} Omar")]
    w = Worker(env, threads=4, faults="after_commit:import_wallet_journal").start()
    try:
        send(env, "import_wallet_journal", request_id=uid("imp"), entries=batch)
        w.wait_dead()  # killed after its commit: the handoff to match_payments is only in the outbox
        with engine.connect() as conn:
            pending = conn.execute(text(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL "
                "AND body->>'actor_name' = 'match_payments'")).scalar_one()
        assert pending == 1 and linked(engine) == {}
        w.start()  # the import is redelivered (a duplicate now); the sweeper sends the handoff

        def swept():  # the sweeper leaves rows younger than a few seconds to their writer
            send(env, "sweep_outbox", request_id=uid("sweep"))
            time.sleep(1)
            return len(linked(engine)) == 2

        wait_until(swept, 60, what="the swept handoff's matching run")
        wait_quiet(env)
        assert linked(engine) == {"j-nina": ("p-nina", "auto_exact"), "j-omar": ("p-omar", "auto_exact")}
        assert ballast(env, "ledger", "balance", f"cycle:{cycle}")["balance"] == 9_000
    finally:
        w.stop()
