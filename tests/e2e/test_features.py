"""Issue 14 through real RabbitMQ, PostgreSQL and worker processes: challenge limits and
notifications, settlements that run out of retries and their operator retries (nobody paid
twice), market disputes, closing a cycle, resolving a one-shot alert."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from infra import rabbit
from tests.e2e.test_markets import balance, cli, dead, ledger_ok, market_status, setup_market
from tests.harness import EventTap, Worker, send, uid, wait_quiet, wait_until

pytestmark = pytest.mark.e2e

STAKE = 150_000


@pytest.fixture
def worker(env, clean_queues):
    """One retry only (200 ms later) and settlement batches of 2 seats: a transient
    failure runs out of retries quickly, in a settlement's second batch."""
    w = Worker(env, processes=1, threads=4, BALLAST_RETRY_MAX_RETRIES="1",
               BALLAST_CHALLENGE_SETTLE_BATCH="2").start()
    yield w
    w.stop()


def scalar(engine, sql, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one_or_none()


def fund(env, engine, users, amount=STAKE):
    for u in users:
        send(env, "deposit", request_id=uid("d"), user_id=u, currency="NGN", amount=amount,
             reference="card")
    wait_until(lambda: all(balance(engine, f"user:{u}:NGN") == amount for u in users), what="deposits")


def join(env, engine, cid, user, side):
    send(env, "join_challenge", request_id=uid("j"), challenge_id=cid, user_id=user, side=side)
    wait_until(lambda: balance(engine, f"user:{user}:NGN") == 0, what=f"{user} joined")


def trigger(engine, sql: str) -> str:
    tag = uid("t")
    with engine.begin() as conn:
        conn.execute(text(sql.replace("{tag}", tag)))
    return tag


def test_challenge_limits_and_human_lines_through_the_workers(env, engine, worker):
    tap = EventTap(env)
    try:
        cid = uid("c")
        closes = (datetime.now(timezone.utc) + timedelta(hours=2)).isoformat()
        send(env, "open_challenge", request_id=uid("r"), challenge_id=cid, title="Derby",
             currency="NGN", stake=STAKE, admin_created=True, closes_at=closes, max_participants=2)
        wait_until(lambda: scalar(engine, "SELECT status FROM challenges WHERE id = :c", c=cid) == "open")
        a, b, late = uid(), uid(), uid()
        fund(env, engine, [a, b, late])
        join(env, engine, cid, a, "YES")
        join(env, engine, cid, b, "NO")
        rid = uid("j")
        send(env, "join_challenge", request_id=rid, challenge_id=cid, user_id=late, side="YES")
        letter = wait_until(lambda: [d.summary() for d in rabbit.list_dead_letters(
            None, 1000, env.broker_url) if d.summary()["request_id"] == rid], what="refused join")
        assert "is full (2 of max_participants 2)" in letter[0]["reason"]
        assert balance(engine, f"user:{late}:NGN") == STAKE  # nothing changed
        code, doc, _ = cli(env, "challenge", "show", cid)
        assert code == 0
        assert (doc["max_participants"], doc["closes_at"], doc["user_count"], doc["potential_matches"]) \
            == (2, datetime.fromisoformat(closes).isoformat(), 2, 0)
        found = wait_until(lambda: {e["recipient"]: e["data"]["message"] for e in tap.named("match.found")
                                    if e["data"]["challenge_id"] == cid} or None, what="match.found")
        assert set(found.values()) == {"You've been matched with another player"}
        rejected = [e for e in tap.drain() if e["event"] == "command.rejected"
                    and e["data"]["request_id"] == rid]
        assert rejected and "is full" in rejected[0]["data"]["reason"]
    finally:
        tap.close()


def test_a_void_challenge_ends_its_treasury_matches_refunded_through_the_workers(env, engine, worker):
    tap = EventTap(env)
    try:
        before = balance(engine, "treasury:NGN")
        send(env, "fund_treasury", request_id=uid("f"), currency="NGN", amount=5 * STAKE,
             reference="capital", performed_by="cfo")
        wait_until(lambda: balance(engine, "treasury:NGN") == before + 5 * STAKE, what="funding")
        cid = uid("c")
        send(env, "open_challenge", request_id=uid("r"), challenge_id=cid, title="Void me",
             currency="NGN", stake=STAKE, admin_created=True)
        wait_until(lambda: scalar(engine, "SELECT status FROM challenges WHERE id = :c", c=cid) == "open")
        send(env, "configure_treasury", request_id=uid("r"), challenge_id=cid, max_risk=2 * STAKE,
             notes="", admin_id="ops")
        users = [uid(), uid()]
        fund(env, engine, users)
        for u in users:
            join(env, engine, cid, u, "YES")
        send(env, "fill_treasury", request_id=uid("r"), challenge_id=cid, side="YES", match_count=2,
             admin_id="ops")
        created = wait_until(lambda: [e for e in tap.named("admin.treasury.match_created")
                                      if e["data"]["challenge_id"] == cid], what="matches")
        assert created[0]["data"]["message"] == "2 matches filled on YES"
        send(env, "resolve_challenge", request_id=uid("r"), challenge_id=cid, result="VOID",
             resolved_by="ops")
        summary = wait_until(lambda: [e for e in tap.named("admin.treasury.settlement")
                                      if e["data"]["challenge_id"] == cid], what="settlement")
        assert summary[0]["data"]["message"] == "Settlement: 0 won, 0 lost, 2 refunded, ₦0.00"
        code, doc, _ = cli(env, "challenge", "show", cid)
        assert [(m["status"], m["result"], m["treasury_payout"], m["pnl"]) for m in doc["matches"]] \
            == [("refunded", None, STAKE, 0)] * 2
        assert [balance(engine, f"user:{u}:NGN") for u in users] == [STAKE, STAKE]
        assert balance(engine, "treasury:NGN") == before + 5 * STAKE
    finally:
        tap.close()


FAIL_SEAT = """
CREATE OR REPLACE FUNCTION test_fail_seat_{tag}() RETURNS trigger AS $$
BEGIN
    IF NEW.settled_at IS NOT NULL AND NEW.user_id = '{user}' THEN
        RAISE EXCEPTION 'injected: could not serialize access' USING ERRCODE = '40001';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER test_fail_seat_{tag} BEFORE UPDATE ON challenge_participants
    FOR EACH ROW EXECUTE FUNCTION test_fail_seat_{tag}();
"""


def test_a_challenge_settlement_out_of_retries_is_failed_then_retried_paying_nobody_twice(
        env, engine, worker):
    cid = uid("c")
    send(env, "open_challenge", request_id=uid("r"), challenge_id=cid, title="Final",
         currency="NGN", stake=STAKE, admin_created=False)
    wait_until(lambda: scalar(engine, "SELECT status FROM challenges WHERE id = :c", c=cid) == "open")
    users = [uid() for _ in range(5)]
    fund(env, engine, users)
    for user, side in zip(users, ["YES", "NO", "YES", "NO", "YES"]):
        join(env, engine, cid, user, side)
    tag = trigger(engine, FAIL_SEAT.replace("{user}", users[2]))  # the second batch fails
    try:
        send(env, "resolve_challenge", request_id=uid("res"), challenge_id=cid, result="YES",
             resolved_by="ops")
        wait_until(lambda: scalar(engine, "SELECT status FROM challenges WHERE id = :c", c=cid)
                   == "settlement_failed", timeout=60, what="settlement_failed")
        letter = wait_until(lambda: [d for d in dead(env, "settle_challenge")
                                     if "injected" in (d.get("reason") or "")], what="dead letter")
        assert "1 retries exhausted" in letter[0]["reason"]
        # One transaction: batch 1's payout rolled back with the failing batch 2.
        assert [balance(engine, f"user:{u}:NGN") for u in users[:2]] == [0, 0]
        assert balance(engine, f"escrow:challenge:{cid}") == 5 * STAKE
        assert scalar(engine, "SELECT status FROM alerts WHERE dedupe_key = :k",
                      k=f"challenge_settlement_failed:{cid}") == "open"
        code, doc, _ = cli(env, "challenge", "show", cid)
        assert doc["status"] == "settlement_failed" and "injected" in doc["settlement_failure"]
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TRIGGER test_fail_seat_{tag} ON challenge_participants"))
    code, doc, err = cli(env, "challenge", "settle", cid, "--by", "ops-ada")
    assert code == 0, err
    wait_until(lambda: scalar(engine, "SELECT status FROM challenges WHERE id = :c", c=cid)
               == "settled", what="settled on retry")
    # y1-n1 and y2-n2 paired (YES won), y3 unpaired: refunded.  Each once.
    assert [balance(engine, f"user:{u}:NGN") for u in users] == [2 * STAKE, 0, 2 * STAKE, 0, STAKE]
    assert balance(engine, f"escrow:challenge:{cid}") == 0
    assert scalar(engine, "SELECT status FROM alerts WHERE dedupe_key = :k",
                  k=f"challenge_settlement_failed:{cid}") == "resolved"
    code, _, err = cli(env, "challenge", "settle", cid, "--by", "ops-ada")
    assert code == 1 and "only a settlement_failed" in err
    ledger_ok(engine)


FAIL_MARKET = """
CREATE OR REPLACE FUNCTION test_fail_market_{tag}() RETURNS trigger AS $$
BEGIN
    IF NEW.status = 'completed' AND NEW.market_id = '{market}' THEN
        RAISE EXCEPTION 'injected: could not serialize access' USING ERRCODE = '40001';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER test_fail_market_{tag} BEFORE UPDATE ON market_distributions
    FOR EACH ROW EXECUTE FUNCTION test_fail_market_{tag}();
"""


def test_a_market_settlement_out_of_retries_is_failed_retried_then_disputed_and_confirmed(
        env, engine, worker):
    a, b = uid("u"), uid("u")
    m, _ = setup_market(env, engine, [a, b], [(a, "red", 10_000), (b, "green", 30_000)])
    tag = trigger(engine, FAIL_MARKET.replace("{market}", m))
    try:
        send(env, "resolve_market", request_id=uid("r"), market_id=m, winning_option_id="red",
             resolved_by="ops")
        wait_until(lambda: scalar(engine, "SELECT status FROM market_distributions WHERE market_id = :m",
                                  m=m) == "failed", timeout=60, what="distribution failed")
        assert market_status(engine, m) == "closed"
        assert scalar(engine, "SELECT count(*) FROM alerts WHERE kind = 'market_settlement_failed' "
                              "AND status = 'open' AND data->>'market_id' = :m", m=m) == 1
        assert balance(engine, f"user:{a}:NGN") == 1_000_000 - 10_000  # nothing paid
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TRIGGER test_fail_market_{tag} ON market_distributions"))
    code, doc, err = cli(env, "market", "settle", m, "--by", "ops-ada")
    assert code == 0, err
    wait_until(lambda: market_status(engine, m) == "settled", what="settled on retry")
    paid = balance(engine, f"user:{a}:NGN")
    assert paid == 1_000_000 - 10_000 + 37_200  # the whole pool less 7 % fees, once
    code, doc, _ = cli(env, "market", "show", m)
    assert (doc["distribution"]["status"], doc["distribution"]["retries"]) == ("completed", 1)

    send(env, "dispute_market", request_id=uid("r"), market_id=m, reason="photo finish",
         disputed_by=b)
    wait_until(lambda: market_status(engine, m) == "disputed", what="disputed")
    rid = uid("r")
    send(env, "dispute_market", request_id=rid, market_id=m, reason="again", disputed_by=a)
    wait_until(lambda: [d for d in dead(env, "dispute_market") if d["request_id"] == rid],
               what="second dispute refused")
    assert "already disputed" in [d for d in dead(env, "dispute_market") if d["request_id"] == rid][0]["reason"]
    send(env, "confirm_market", request_id=uid("r"), market_id=m, confirmed_by="ops-ada",
         note="photo reviewed")
    wait_until(lambda: market_status(engine, m) == "settled", what="confirmed")
    code, doc, _ = cli(env, "market", "show", m)
    assert (doc["dispute"]["status"], doc["dispute"]["ended_by"]) == ("confirmed", "ops-ada")
    assert balance(engine, f"user:{a}:NGN") == paid  # confirming moves no money
    ledger_ok(engine)


def test_a_cycle_is_closed_through_the_workers(env, engine, worker, empty_journal):
    cycle = uid("cy")
    send(env, "register_character", request_id=uid("r"), character_id=71_001, name="Logi X",
         role="LOGISTICS")
    send(env, "plan_cycle", request_id=uid("r"), cycle_id=cycle)
    wait_until(lambda: scalar(engine, "SELECT status FROM journal_cycles WHERE cycle_id = :c",
                              c=cycle) == "planned", what="planned")
    send(env, "create_participation", request_id=uid("r"), participation_id=uid("p"),
         cycle_id=cycle, user_id="u1", character_name="Alpha", amount=5_000)
    send(env, "import_wallet_journal", request_id=uid("r"), entries=[{
        "journal_id": uid("j"), "character_id": 71_001, "date": "2026-01-01T00:00:00+00:00",
        "ref_type": "player_donation", "amount": 5_000, "reason": f"ARB {cycle} Alpha",
        "first_party_id": 90_001, "second_party_id": 71_001}])
    wait_until(lambda: balance(engine, f"cycle:{cycle}") == 5_000, what="payment matched")
    send(env, "open_cycle", request_id=uid("r"), cycle_id=cycle)
    wait_until(lambda: scalar(engine, "SELECT status FROM journal_cycles WHERE cycle_id = :c",
                              c=cycle) == "open", what="open")
    send(env, "close_cycle", request_id=uid("r"), cycle_id=cycle, closed_by="ops-ada")
    wait_until(lambda: scalar(engine, "SELECT status FROM journal_cycles WHERE cycle_id = :c",
                              c=cycle) == "closed", what="closed")
    code, doc, _ = cli(env, "cycle", "show", cycle)
    assert (doc["status"], doc["closing_capital"], doc["closed_by"]) == ("closed", 5_000, "ops-ada")
    rid = uid("r")
    send(env, "create_participation", request_id=rid, participation_id=uid("p"), cycle_id=cycle,
         user_id="u2", character_name="Beta", amount=1_000)
    wait_until(lambda: [d for d in dead(env, "create_participation") if d["request_id"] == rid],
               what="refused after close")
    wait_quiet(env)


def test_demo_chapters_show_the_limits_a_dispute_and_a_closed_cycle(env, engine, worker, empty_journal):
    from infra.broker import build_broker
    from infra.demo import challenges, journal, markets
    from infra.demo.context import DemoContext

    broker = build_broker(env.broker_url)
    try:
        ctx = DemoContext(engine, broker, as_json=True)
        for chapter in (challenges, markets, journal):
            chapter.run(ctx)
    finally:
        broker.close()
    limits = ctx.report["challenges"]["views"]["challenge show (limits)"]
    assert (limits["max_participants"], limits["user_count"]) == (2, 2) and limits["closes_at"]
    said = " ".join(s["say"] for s in ctx.report["challenges"]["steps"])
    assert "is full (2 of max_participants 2)" in said and "Settlement: " in said
    second = ctx.report["markets"]["views"]["market show (after rollback and second resolution)"]
    assert (second["dispute"]["status"], second["dispute"]["reresolved_outcome"]) == \
        ("rolled_back", "thunder")
    said = " ".join(s["say"] for s in ctx.report["markets"]["steps"])
    assert "already disputed" in said and "dispute confirmed, 2 dispute(s)" in said
    closed = ctx.report["journal"]["views"]["cycle show (closed)"]
    assert closed["status"] == "closed"
    assert closed["closing_capital"] == closed["account_balance"] == closed["initial_capital"]
