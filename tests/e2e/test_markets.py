"""Market payouts through real RabbitMQ, PostgreSQL and worker processes (issue 5)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sqlalchemy import text

from domain.markets import Commitment, Outcome, distribute
from infra import ledger, rabbit
from tests.harness import ROOT, Worker, send, uid, wait_quiet, wait_until

pytestmark = pytest.mark.e2e

OPTIONS = [{"option_id": "red", "label": "Red"}, {"option_id": "green", "label": "Green"},
           {"option_id": "blue", "label": "Blue"}]


def balance(engine, code):
    with engine.connect() as conn:
        return ledger.balances(conn, [code]).get(code, 0)


def market_status(engine, market_id):
    with engine.connect() as conn:
        return conn.execute(text("SELECT status FROM markets WHERE market_id = :m"),
                            {"m": market_id}).scalar_one_or_none()


def ledger_ok(engine):
    with engine.connect() as conn:
        result = ledger.check(conn)
    assert result["ok"], result


def dead(env, actor):
    return [d.summary() for d in rabbit.list_dead_letters(None, 1000, env.broker_url)
            if d.body.get("actor_name") == actor]


def cli(env, *args):
    out = subprocess.run([sys.executable, "-m", "infra.cli.main", *args, "--json"], cwd=ROOT,
                         env=env.environ(), capture_output=True, text=True, timeout=120)
    return out.returncode, (json.loads(out.stdout) if out.stdout.strip() else None), out.stderr


def setup_market(env, engine, users, placed, *, fee=200, amount=1_000_000):
    """Deposits, an open multi-option market and the commitments; waits until all are in."""
    m = uid("m")
    for u in users:
        send(env, "deposit", request_id=uid("r"), user_id=u, currency="NGN", amount=amount,
             reference="bank")
    send(env, "open_market", request_id=uid("r"), market_id=m, title="colour", kind="multi",
         options=OPTIONS, currency="NGN", creator_id="maker", creator_fee_bps=fee)
    wait_until(lambda: market_status(engine, m) == "open" and all(
        balance(engine, f"user:{u}:NGN") == amount for u in users), what="market and deposits")
    ids = []
    for u, option, stake in placed:
        cid = uid("c")
        ids.append(cid)
        send(env, "place_commitment", request_id=uid("r"), commitment_id=cid, market_id=m,
             user_id=u, amount=stake, option_id=option)
    total = sum(s for _, _, s in placed)
    wait_until(lambda: balance(engine, f"escrow:market:{m}") == total, what="commitments")
    return m, [Commitment(c, u, o, s) for c, (u, o, s) in zip(ids, placed)]


def test_resolve_settles_through_the_workers_and_tells_every_user(env, engine, worker, events):
    users = [uid("u") for _ in range(3)]
    placed = [(users[0], "red", 3_000), (users[0], "blue", 1_000), (users[1], "red", 1_001),
              (users[2], "green", 5_000)]
    m, commitments = setup_market(env, engine, users, placed)
    send(env, "resolve_market", request_id=uid("r"), market_id=m, winning_option_id="red",
         resolved_by="ops")
    wait_until(lambda: market_status(engine, m) == "settled", what="settlement")
    expected = distribute(commitments, Outcome.winner("red"), 500, 200)
    for u in users:
        assert balance(engine, f"user:{u}:NGN") == 1_000_000 - sum(
            s for uu, _, s in placed if uu == u) + expected.payouts_by_user().get(u, 0)
    assert balance(engine, f"escrow:market:{m}") == 0

    settled = wait_until(lambda: [e for e in events.named("market.settled")
                                  if e["data"]["market_id"] == m], what="market.settled")
    assert settled[0]["data"]["breakage"] == expected.breakage
    payouts = wait_until(lambda: (lambda got: got if len(got) == 3 else None)(
        [e for e in events.named("market.payout") if e["data"]["market_id"] == m]),
        what="one notification per user")
    told = {e["recipient"]: e["data"] for e in payouts}
    assert set(told) == set(users)
    assert told[users[1]]["payout"] == expected.payouts_by_user()[users[1]]
    assert told[users[2]]["result"] == "lost"

    code, doc, _ = cli(env, "market", "show", m)
    assert code == 0
    assert (doc["market_id"], doc["status"], doc["pool"]) == (m, "settled", 10_001)
    dist = doc["distribution"]
    assert (dist["status"], dist["house_fee"], dist["creator_fee"], dist["breakage"]) == (
        "completed", expected.terms.house_fee, expected.terms.creator_fee, expected.breakage)
    assert sorted((ln["commitment_id"], ln["payout"], ln["profit"], ln["method"]) for ln in dist["lines"]) == \
        sorted((ln.commitment.commitment_id, ln.payout, ln.profit, "option_id") for ln in expected.lines)
    code, _, err = cli(env, "market", "show", "no-such-market")
    assert code == 1 and "does not exist" in err
    ledger_ok(engine)


def test_refused_market_commands_are_dead_lettered_with_a_reason_and_change_nothing(env, engine, worker):
    u = uid("u")
    m, _ = setup_market(env, engine, [u], [(u, "red", 1_000)])
    position_on_multi, unknown, fee, closed = uid("r"), uid("r"), uid("r"), uid("r")
    send(env, "place_commitment", request_id=position_on_multi, commitment_id=uid("c"), market_id=m,
         user_id=u, amount=100, option_id="red", position="yes")
    send(env, "place_commitment", request_id=unknown, commitment_id=uid("c"), market_id=uid("nope"),
         user_id=u, amount=100, option_id="red")
    send(env, "open_market", request_id=fee, market_id=uid("m"), title="t", kind="multi",
         options=OPTIONS, currency="NGN", creator_id="maker", creator_fee_bps=50)
    send(env, "resolve_market", request_id=uid("r"), market_id=m, winning_option_id="red",
         resolved_by="ops")
    wait_until(lambda: market_status(engine, m) == "settled")
    paid = balance(engine, f"user:{u}:NGN")
    send(env, "place_commitment", request_id=closed, commitment_id=uid("c"), market_id=m,
         user_id=u, amount=100, option_id="red")

    def reasons():
        got = {d["request_id"]: d for d in dead(env, "place_commitment") + dead(env, "open_market")}
        return got if {position_on_multi, unknown, fee, closed} <= set(got) else None

    got = wait_until(reasons, what="dead letters")
    assert "multi-option" in got[position_on_multi]["reason"]
    assert "does not exist" in got[unknown]["reason"]
    assert "creator fee 50 bps is outside 100–500 bps" in got[fee]["reason"]
    assert "is settled" in got[closed]["reason"]
    assert all(got[r]["retries"] == 0 for r in got)
    assert balance(engine, f"user:{u}:NGN") == paid
    ledger_ok(engine)


def test_a_worker_killed_mid_settlement_pays_nobody_twice(env, engine, clean_queues):
    users = [uid("u") for _ in range(5)]
    placed = [(users[i % 5], ("red", "green", "blue")[i % 3], 1_000 + 37 * i) for i in range(11)]
    with Worker(env, threads=4):
        m, commitments = setup_market(env, engine, users, placed)
    committed = {u: balance(engine, f"user:{u}:NGN") for u in users}
    # Batches of 2 commitments: the fault kills the worker after the first batch is posted,
    # before the settlement commits.
    w = Worker(env, faults="settle_batch:settle_market", BALLAST_MARKET_SETTLE_BATCH="2").start()
    try:
        send(env, "resolve_market", request_id=uid("r"), market_id=m, winning_option_id="green",
             resolved_by="ops")
        w.wait_dead()
        assert {u: balance(engine, f"user:{u}:NGN") for u in users} == committed  # nobody paid yet
        assert market_status(engine, m) == "settling"
        w.start()  # RabbitMQ redelivers the settle_market message
        wait_until(lambda: market_status(engine, m) == "settled", what="settlement after restart")
        wait_quiet(env, outbox=False)
    finally:
        w.stop()
    expected = distribute(commitments, Outcome.winner("green"), 500, 200)
    for u in users:
        assert balance(engine, f"user:{u}:NGN") - committed[u] == expected.payouts_by_user().get(u, 0)
    with engine.connect() as conn:
        audit = conn.execute(text(
            "SELECT count(*) FROM wallet_audit WHERE kind = 'payout' AND metadata->>'market_id' = :m"),
            {"m": m}).scalar_one()
    assert audit == sum(1 for ln in expected.lines if ln.payout > 0)
    ledger_ok(engine)


def test_a_worker_killed_after_the_settlement_commits_changes_nothing_on_redelivery(env, engine,
                                                                                  clean_queues):
    users = [uid("u") for _ in range(2)]
    with Worker(env, threads=4):
        m, commitments = setup_market(env, engine, users, [(users[0], "red", 700),
                                                           (users[1], "blue", 300)])
    w = Worker(env, faults="after_commit:settle_market").start()
    try:
        send(env, "resolve_market", request_id=uid("r"), market_id=m, winning_option_id="red",
             resolved_by="ops")
        w.wait_dead()
        assert market_status(engine, m) == "settled"
        paid = balance(engine, f"user:{users[0]}:NGN")
        w.start()
        wait_quiet(env, outbox=False)
    finally:
        w.stop()
    assert balance(engine, f"user:{users[0]}:NGN") == paid == 1_000_000 - 700 + 930
    ledger_ok(engine)


def test_resolve_rollback_resolve_and_a_second_rollback_through_the_workers(env, engine, worker,
                                                                           events):
    users = [uid("u") for _ in range(3)]
    placed = [(users[0], "red", 2_000), (users[1], "green", 3_000), (users[2], "green", 1_500),
              (users[2], "blue", 500)]
    m, commitments = setup_market(env, engine, users, placed)
    codes = [f"user:{u}:NGN" for u in users] + ["house:NGN", "creator:maker:NGN"]
    committed = {c: balance(engine, c) for c in codes}

    send(env, "resolve_market", request_id=uid("r"), market_id=m, winning_option_id="red",
         resolved_by="ops")
    wait_until(lambda: market_status(engine, m) == "settled")
    rollback = dict(market_id=m, reason="wrong winner", requested_by="ops")
    send(env, "rollback_market", request_id=uid("r"), **rollback)
    send(env, "rollback_market", request_id=uid("r"), **rollback)  # twice: reversed once
    wait_until(lambda: market_status(engine, m) == "closed")
    wait_quiet(env, outbox=False)  # both rollbacks processed
    assert {c: balance(engine, c) for c in codes} == committed
    assert not dead(env, "rollback_market")
    rolled = wait_until(lambda: [e for e in events.named("market.rolled_back")
                                 if e["data"]["market_id"] == m])
    assert len(rolled) == 1 and len(rolled[0]["data"]["reversed"]) == 2

    send(env, "resolve_market", request_id=uid("r"), market_id=m, winning_option_id="green",
         resolved_by="ops")
    wait_until(lambda: market_status(engine, m) == "settled")
    expected = distribute(commitments, Outcome.winner("green"), 500, 200)
    for u in users:
        assert balance(engine, f"user:{u}:NGN") - committed[f"user:{u}:NGN"] == \
            expected.payouts_by_user().get(u, 0)
    assert balance(engine, "creator:maker:NGN") - committed["creator:maker:NGN"] == expected.terms.creator_fee
    code, doc, _ = cli(env, "market", "show", m)
    assert doc["distribution"]["status"] == "completed"
    ledger_ok(engine)


def test_a_settlement_the_books_cannot_pay_fails_and_leaves_the_market_resolvable(env, engine,
                                                                                worker):
    u = uid("u")
    m, _ = setup_market(env, engine, [u], [(u, "red", 1_000)])
    with engine.begin() as conn:  # money left the escrow outside the market's own flow
        from domain.ledger import Posting
        ledger.post(conn, [Posting(f"escrow:market:{m}", "NGN", -10),
                           Posting("world:NGN", "NGN", 10)], kind="test")
    send(env, "resolve_market", request_id=uid("r"), market_id=m, winning_option_id="red",
         resolved_by="ops")
    letter = wait_until(lambda: [d for d in dead(env, "settle_market")
                                 if m in (d.get("reason") or "")], what="dead-lettered settlement")
    assert "holds 990, expected 1000" in letter[0]["reason"]
    wait_until(lambda: market_status(engine, m) == "closed")
    with engine.connect() as conn:
        status, failure = conn.execute(text(
            "SELECT status, failure FROM market_distributions WHERE market_id = :m"), {"m": m}).one()
        alert = conn.execute(text(
            "SELECT count(*) FROM alerts WHERE kind = 'market_settlement_failed' "
            "AND data->>'market_id' = :m"), {"m": m}).scalar_one()
    assert status == "failed" and "holds 990" in failure and alert == 1
    assert balance(engine, f"user:{u}:NGN") == 1_000_000 - 1_000
