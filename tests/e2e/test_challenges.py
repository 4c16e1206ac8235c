"""Treasury balancing through real RabbitMQ, PostgreSQL and worker processes (issue 4)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone

import pytest
from sqlalchemy import text

from infra import ledger, rabbit
from tests.harness import ROOT, EventTap, Worker, send, uid, wait_quiet, wait_until

pytestmark = pytest.mark.e2e

STAKE = 150_000  # ₦1,500.00


def balance(engine, code: str) -> int:
    with engine.connect() as conn:
        return ledger.balances(conn, [code]).get(code, 0)


def scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one_or_none()


def status(engine, cid: str):
    return scalar(engine, "SELECT status FROM challenges WHERE id = :c", c=cid)


def dead(env, request_id: str):
    return [d.summary() for d in rabbit.list_dead_letters(None, 1000, env.broker_url)
            if d.summary()["request_id"] == request_id]


def ballast_json(env, *args: str):
    out = subprocess.run([sys.executable, "-m", "infra.cli.main", *args, "--json"], cwd=ROOT,
                         env=env.environ(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def fund_treasury(env, engine, amount: int) -> None:
    before = balance(engine, "treasury:NGN")
    send(env, "fund_treasury", request_id=uid("fund"), currency="NGN", amount=amount,
         reference="capital", performed_by="cfo")
    wait_until(lambda: balance(engine, "treasury:NGN") == before + amount, what="treasury funding")


def open_challenge(env, engine, *, admin: bool = True, max_risk: int | None = None) -> str:
    cid = uid("c")
    send(env, "open_challenge", request_id=uid("r"), challenge_id=cid, title="Eagles win on Sunday?",
         currency="NGN", stake=STAKE, admin_created=admin)
    wait_until(lambda: status(engine, cid) == "open", what="challenge opened")
    if max_risk is not None:
        send(env, "configure_treasury", request_id=uid("r"), challenge_id=cid, max_risk=max_risk,
             notes="weekend special", admin_id="ops-ada")
        wait_until(lambda: scalar(engine, "SELECT max_risk FROM challenge_treasury WHERE challenge_id = :c",
                                  c=cid) == max_risk, what="treasury configured")
    return cid


def join_all(env, engine, cid: str, sides: list[str]) -> list[str]:
    """Fund and join one user per side, in order (each join waits for the previous: FCFS)."""
    users = [uid() for _ in sides]
    for user in users:
        send(env, "deposit", request_id=uid("d"), user_id=user, currency="NGN", amount=STAKE,
             reference="card")
    wait_until(lambda: all(balance(engine, f"user:{u}:NGN") == STAKE for u in users), what="deposits")
    for user, side in zip(users, sides):
        send(env, "join_challenge", request_id=uid("j"), challenge_id=cid, user_id=user, side=side)
        wait_until(lambda: balance(engine, f"user:{user}:NGN") == 0, what=f"{user} joined")
    return users


def test_a_challenge_is_balanced_and_settled_through_the_workers(env, engine, worker):
    tap = EventTap(env)
    try:
        fund_treasury(env, engine, 100 * STAKE)
        treasury_before = balance(engine, "treasury:NGN")
        cid = open_challenge(env, engine, max_risk=2 * STAKE)
        y1, y2, n1, y3, y4 = join_all(env, engine, cid, ["YES", "YES", "NO", "YES", "YES"])
        send(env, "fill_treasury", request_id=uid("fill"), challenge_id=cid, side="YES", match_count=3,
             admin_id="ops-ada")
        created = wait_until(lambda: [e for e in tap.named("admin.treasury.match_created")
                                      if e["data"]["challenge_id"] == cid], what="match created")
        assert created[0]["data"]["created"] == 2 and created[0]["recipient"] == "admin"
        found = {e["recipient"] for e in tap.seen if e["event"] == "match.found"
                 and e["data"]["challenge_id"] == cid}
        assert found == {y1, n1, y2, y3}  # y1-n1 paired at join; y2, y3 with personas
        doc = ballast_json(env, "challenge", "show", cid)
        assert [m["user_id"] for m in doc["matches"]] == [y2, y3]
        assert (doc["unmatched_yes"], doc["treasury"]["allocated"], doc["match_rate"]) == (1, 2 * STAKE, 80)

        send(env, "resolve_challenge", request_id=uid("res"), challenge_id=cid, result="NO",
             resolved_by="ops-ada")
        summary = wait_until(lambda: [e for e in tap.named("admin.treasury.settlement")
                                      if e["data"]["challenge_id"] == cid], what="settlement")
        assert {k: summary[0]["data"][k] for k in ("won", "lost", "refunded", "net_pnl")} == \
            {"won": 2, "lost": 0, "refunded": 0, "net_pnl": 2 * STAKE}
        told = {e["recipient"]: e["data"]["message"] for e in tap.seen
                if e["event"] == "challenge.settled" and e["data"]["challenge_id"] == cid}
        assert told == {n1: "You won ₦3,000.00", y1: "You lost ₦1,500.00", y2: "You lost ₦1,500.00",
                        y3: "You lost ₦1,500.00", y4: "Your stake of ₦1,500.00 was refunded"}
        assert balance(engine, f"user:{n1}:NGN") == 2 * STAKE
        assert balance(engine, f"user:{y4}:NGN") == STAKE
        assert balance(engine, f"escrow:challenge:{cid}") == 0
        assert balance(engine, "treasury:NGN") == treasury_before + 2 * STAKE
        dash = ballast_json(env, "treasury", "dashboard")
        assert dash["recent_settlements"][0]["challenge_id"] == cid
        assert ballast_json(env, "ledger", "check")["ok"]

        today = datetime.now(timezone.utc).date().isoformat()  # BALLAST_TIMEZONE is UTC here
        send(env, "send_daily_summary", request_id=f"schedule:daily_summary:{uid()}", day=today)
        report = wait_until(lambda: [e for e in tap.named("admin.treasury.daily_summary")
                                     if e["data"]["day"] == today], what="daily summary")[0]
        ngn = report["data"]["currencies"]["NGN"]
        assert report["recipient"] == "admin"
        assert ngn["matches_created"] >= 2 and ngn["won"] >= 2 and ngn["challenges_settled"] >= 1
    finally:
        tap.close()


@pytest.mark.parametrize("bound", ["budget", "personas"])
def test_concurrent_fills_never_exceed_max_risk_nor_reuse_a_persona(env, engine, clean_queues, bound):
    w = Worker(env, processes=3, threads=4).start()
    try:
        pool = scalar(engine, "SELECT count(*) FROM shadow_personas WHERE active")
        users = pool + 6 if bound == "personas" else 30
        max_risk = (users + 10) * STAKE if bound == "personas" else 12 * STAKE
        fund_treasury(env, engine, (users + 10) * STAKE)
        treasury_before = balance(engine, "treasury:NGN")
        cid = open_challenge(env, engine, max_risk=max_risk)
        # Joins on one side pair with nobody, so their order does not matter: send them all.
        people = [uid() for _ in range(users)]
        for u in people:
            send(env, "deposit", request_id=uid("d"), user_id=u, currency="NGN", amount=STAKE,
                 reference="card")
        wait_until(lambda: all(balance(engine, f"user:{u}:NGN") == STAKE for u in people), 60)
        for u in people:
            send(env, "join_challenge", request_id=uid("j"), challenge_id=cid, user_id=u, side="YES")
        wait_until(lambda: scalar(engine, "SELECT count(*) FROM challenge_participants "
                                  "WHERE challenge_id = :c", c=cid) == users, 60, what="joins")
        for _ in range(12):  # all at once, on every thread of every process
            send(env, "fill_treasury", request_id=uid("fill"), challenge_id=cid, side="YES",
                 match_count=8, admin_id="ops-ada")
        wait_quiet(env, timeout=120)

        expected = pool if bound == "personas" else 12
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT persona_id, participant_id, status FROM treasury_matches "
                                     "WHERE challenge_id = :c"), {"c": cid}).all()
            cfg = conn.execute(text("SELECT * FROM challenge_treasury WHERE challenge_id = :c"),
                               {"c": cid}).one()
            assert ledger.check(conn)["ok"]
        assert len(rows) == expected and {r.status for r in rows} == {"active"}
        assert len({r.persona_id for r in rows}) == expected  # no persona twice
        assert len({r.participant_id for r in rows}) == expected  # no user twice
        assert cfg.allocated == expected * STAKE <= cfg.max_risk and cfg.reserved == 0
        assert balance(engine, "treasury:NGN") == treasury_before - expected * STAKE
        assert balance(engine, f"escrow:challenge:{cid}") == (users + expected) * STAKE
    finally:
        w.stop()


def test_a_worker_killed_during_settlement_pays_nobody_twice(env, engine, clean_queues):
    w = Worker(env, processes=1, threads=4, faults="settle_batch:settle_challenge",
               BALLAST_CHALLENGE_SETTLE_BATCH="3").start()
    try:
        fund_treasury(env, engine, 10 * STAKE)
        treasury_before = balance(engine, "treasury:NGN")
        cid = open_challenge(env, engine, max_risk=3 * STAKE)
        sides = ["YES", "NO", "YES", "YES", "NO", "YES", "YES", "YES", "YES", "YES"]
        users = join_all(env, engine, cid, sides)
        send(env, "fill_treasury", request_id=uid("fill"), challenge_id=cid, side="YES", match_count=3,
             admin_id="ops-ada")
        wait_until(lambda: scalar(engine, "SELECT filled_count FROM challenge_treasury "
                                  "WHERE challenge_id = :c", c=cid) == 3, what="fill")
        send(env, "resolve_challenge", request_id=uid("res"), challenge_id=cid, result="YES",
             resolved_by="ops-ada")
        w.wait_dead()  # killed after the first batch of seats, before the commit
        settled = scalar(engine, "SELECT count(*) FROM challenge_participants "
                         "WHERE challenge_id = :c AND settled_at IS NOT NULL", c=cid)
        assert settled == 0 and status(engine, cid) == "resolved"  # one transaction: nothing paid
        assert balance(engine, f"escrow:challenge:{cid}") == 13 * STAKE  # every stake still held
        w.start()  # RabbitMQ redelivers the settlement; it settles the whole challenge
        wait_until(lambda: status(engine, cid) == "settled", 60, what="settlement redone")

        def swept():  # every event of the settlement is published
            send(env, "sweep_outbox", request_id=uid("sweep"))
            return scalar(engine, "SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0

        wait_until(swept, 60, interval=2, what="outbox swept")
    finally:
        w.stop()
    # Pairs: (u0 YES, u1 NO), (u2 YES, u4 NO); treasury vs u3, u5, u6; u7..u9 unpaired.
    expected = [2 * STAKE, 0, 2 * STAKE, 2 * STAKE, 0, 2 * STAKE, 2 * STAKE, STAKE, STAKE, STAKE]
    assert [balance(engine, f"user:{u}:NGN") for u in users] == expected
    with engine.connect() as conn:
        credits = conn.execute(text(
            "SELECT a.code, count(*) FROM ledger_entries e JOIN accounts a ON a.id = e.account_id "
            "JOIN ledger_transactions t ON t.id = e.transaction_id "
            "WHERE t.kind = 'challenge_settlement' AND t.metadata->>'challenge_id' = :c GROUP BY a.code"),
            {"c": cid}).all()
        assert ledger.check(conn)["ok"]
    assert all(n == 1 for code, n in credits if code.startswith("user:"))
    assert len([c for c, _ in credits if c.startswith("user:")]) == 8  # everyone but the losers
    assert balance(engine, f"escrow:challenge:{cid}") == 0
    assert balance(engine, "treasury:NGN") == treasury_before - 3 * STAKE


@pytest.mark.parametrize("case", ["non_admin", "beyond_budget", "unknown_side", "unknown_challenge",
                                  "resolved"])
def test_refused_fill_or_resolve_is_dead_lettered_with_its_reason_and_changes_nothing(
        env, engine, worker, case):
    fund_treasury(env, engine, 10 * STAKE)
    cid = open_challenge(env, engine, admin=case != "non_admin",
                         max_risk=None if case == "non_admin" else STAKE)
    join_all(env, engine, cid, ["YES", "YES"])
    if case in ("beyond_budget", "resolved"):
        send(env, "fill_treasury", request_id=uid("fill"), challenge_id=cid, side="YES", match_count=1,
             admin_id="ops-ada")
        wait_until(lambda: scalar(engine, "SELECT filled_count FROM challenge_treasury "
                                  "WHERE challenge_id = :c", c=cid) == 1, what="first fill")
    if case == "resolved":
        send(env, "resolve_challenge", request_id=uid("res"), challenge_id=cid, result="VOID",
             resolved_by="ops-ada")
        wait_until(lambda: status(engine, cid) == "settled", what="settled")
    wait_quiet(env)
    before = {"entries": scalar(engine, "SELECT count(*) FROM ledger_entries"),
              "matches": scalar(engine, "SELECT count(*) FROM treasury_matches"),
              "fills": scalar(engine, "SELECT count(*) FROM treasury_fills"),
              "status": status(engine, cid)}
    rid = uid("bad")
    if case == "unknown_challenge":
        send(env, "resolve_challenge", request_id=rid, challenge_id="no-such-challenge", result="YES",
             resolved_by="ops-ada")
    else:
        send(env, "fill_treasury", request_id=rid, challenge_id=cid, match_count=1, admin_id="ops-ada",
             side="SIDEWAYS" if case == "unknown_side" else "YES")
    letter = wait_until(lambda: dead(env, rid), what="dead letter")[0]
    reason = {"non_admin": "not admin-created", "beyond_budget": "budget exhausted",
              "unknown_side": "side", "unknown_challenge": "does not exist",
              "resolved": "already settled"}[case]
    assert reason in letter["reason"] and letter["retries"] == 0
    wait_quiet(env)
    after = {"entries": scalar(engine, "SELECT count(*) FROM ledger_entries"),
             "matches": scalar(engine, "SELECT count(*) FROM treasury_matches"),
             "fills": scalar(engine, "SELECT count(*) FROM treasury_fills"),
             "status": status(engine, cid)}
    assert after == before
