"""Treasury balancing on the real PostgreSQL, through the real actor code, in this process."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from domain.errors import InvalidCommand, NotFound, Refused
from domain.ledger import Posting
from infra import ledger
from infra.challenges import views
from infra.challenges import personas as persona_pool
from tests.harness import uid
from tests.infra import challenges_pipeline as p

STAKE = 1_000


def set_treasury(engine, amount: int, currency: str = "NGN") -> None:
    """Test setup: make ``treasury:{CUR}`` hold exactly ``amount`` (the difference from world)."""
    code = f"treasury:{currency}"
    with engine.begin() as conn:
        delta = amount - ledger.balances(conn, [code]).get(code, 0)
        if delta:
            ledger.post(conn, [Posting(code, currency, delta), Posting(f"world:{currency}", currency, -delta)],
                        kind="test_setup")


def open_challenge(*, admin=True, stake=STAKE, currency="NGN", max_risk=None) -> str:
    cid = uid("c")
    p.run("open_challenge", challenge_id=cid, title="Will it rain?", currency=currency, stake=stake,
          admin_created=admin)
    if max_risk is not None:
        p.run("configure_treasury", challenge_id=cid, max_risk=max_risk, notes="test", admin_id="adm")
    return cid


def join(cid: str, side: str, stake: int = STAKE, currency: str = "NGN") -> str:
    user = uid()
    p.fund_user(user, stake, currency)
    p.run("join_challenge", challenge_id=cid, user_id=user, side=side)
    return user


def show(engine, cid):
    with engine.connect() as conn:
        return views.show(conn, cid)


def snapshot(engine, cid: str | None) -> dict:
    """Everything a refused command could have touched."""
    with engine.connect() as conn:
        q = lambda sql: conn.execute(text(sql), {"c": cid}).all()  # noqa: E731
        return {
            "challenge": q("SELECT * FROM challenges WHERE id = :c"),
            "participants": q("SELECT * FROM challenge_participants WHERE challenge_id = :c ORDER BY id"),
            "config": q("SELECT * FROM challenge_treasury WHERE challenge_id = :c"),
            "fills": q("SELECT * FROM treasury_fills WHERE challenge_id = :c ORDER BY id"),
            "matches": q("SELECT * FROM treasury_matches WHERE challenge_id = :c ORDER BY id"),
            "ledger": q("SELECT count(*) FROM ledger_entries"),
            "accounts": q("SELECT code, balance FROM account_balances ORDER BY code"),
            "outbox": q("SELECT count(*) FROM outbox"),
            "alerts": q("SELECT id, status FROM alerts ORDER BY id"),
        }


@pytest.fixture(autouse=True)
def _no_leftover_steps():
    p.clear_pending()
    yield
    p.clear_pending()


# --- joins and pairing ----------------------------------------------------------------

def test_join_moves_the_stake_into_escrow_and_pairs_first_come(engine):
    cid = open_challenge()
    y1, y2, y3 = (join(cid, "YES") for _ in range(3))
    n1 = join(cid, "NO")
    assert p.balance(engine, f"user:{y1}:NGN") == 0
    assert p.balance(engine, f"escrow:challenge:{cid}") == 4 * STAKE
    doc = show(engine, cid)
    assert (doc["yes_count"], doc["no_count"], doc["unmatched_yes"], doc["unmatched_no"]) == (3, 1, 2, 0)
    assert (doc["gap"], doc["imbalanced_side"], doc["match_rate"]) == (2 * STAKE, "YES", 50)
    with engine.connect() as conn:
        paired = conn.execute(text(
            "SELECT a.user_id FROM challenge_participants a JOIN challenge_participants b "
            "ON b.id = a.paired_with WHERE b.user_id = :n"), {"n": n1}).scalar_one()
    assert paired == y1  # the earliest YES
    found = {e["recipient"] for e in p.events(engine, "match.found", challenge_id=cid)}
    assert found == {y1, n1}


def test_a_user_joins_a_challenge_once(engine):
    cid = open_challenge()
    user = join(cid, "YES")
    p.fund_user(user, STAKE)
    before = snapshot(engine, cid)
    with pytest.raises(Refused, match="already joined"):
        p.run("join_challenge", challenge_id=cid, user_id=user, side="NO")
    assert snapshot(engine, cid) == before


def test_reopening_with_other_terms_is_refused_and_same_terms_is_harmless(engine):
    cid = open_challenge()
    p.run("open_challenge", challenge_id=cid, title="Will it rain?", currency="NGN", stake=STAKE,
          admin_created=True)
    with pytest.raises(Refused, match="other terms"):
        p.run("open_challenge", challenge_id=cid, title="Will it rain?", currency="NGN", stake=5,
              admin_created=True)
    assert show(engine, cid)["stake"] == STAKE


# --- fills ----------------------------------------------------------------------------

def test_fill_matches_the_earliest_waiting_users_within_the_budget(engine):
    set_treasury(engine, 100 * STAKE)
    cid = open_challenge(max_risk=3 * STAKE)
    users = [join(cid, "YES") for _ in range(5)]
    p.run("fill_treasury", challenge_id=cid, side="YES", match_count=4, admin_id="adm")
    doc = show(engine, cid)
    assert [m["user_id"] for m in doc["matches"]] == users[:3]
    assert doc["treasury"] == {"max_risk": 3 * STAKE, "allocated": 3 * STAKE, "remaining": 0,
                               "filled_count": 3, "reserved": 0, "notes": "test"}
    assert len({m["persona"] for m in doc["matches"]}) == 3
    assert doc["unmatched_yes"] == 2 and doc["match_rate"] == 60
    assert p.balance(engine, "treasury:NGN") == 97 * STAKE
    assert p.balance(engine, f"escrow:challenge:{cid}") == 8 * STAKE
    short = p.events(engine, "admin.treasury.fill_shortfall", challenge_id=cid)
    assert short[0]["data"]["reasons"] == ["budget"] and short[0]["data"]["shortfall"] == 1
    created = p.events(engine, "admin.treasury.match_created", challenge_id=cid)
    assert created[0]["data"]["created"] == 3 and created[0]["data"]["treasury_staked"] == 3 * STAKE
    assert {e["recipient"] for e in p.events(engine, "match.found", challenge_id=cid)} == set(users[:3])
    assert open_alert(engine, f"treasury:budget:{cid}")


def test_no_user_is_told_matched_before_the_match_commits(engine):
    set_treasury(engine, 100 * STAKE)
    cid = open_challenge(max_risk=10 * STAKE)
    user = join(cid, "NO")
    p.run("fill_treasury", drain=False, challenge_id=cid, side="NO", match_count=1, admin_id="adm")
    assert [m.actor_name for m in p.pending()] == ["assign_personas"]
    p.run_pending(limit=1)  # personas assigned: the user is held, not matched
    assert [m.actor_name for m in p.pending()] == ["create_treasury_matches"]
    assert not p.events(engine, "match.found", challenge_id=cid)
    assert show(engine, cid)["matches"] == []
    p.run_pending()
    assert [e["recipient"] for e in p.events(engine, "match.found", challenge_id=cid)] == [user]


def test_persona_pool_exhaustion_is_reported_and_alerted(engine):
    set_treasury(engine, 1_000 * STAKE)
    with engine.connect() as conn:
        pool = conn.execute(text("SELECT count(*) FROM shadow_personas WHERE active")).scalar_one()
    cid = open_challenge(max_risk=1_000 * STAKE)
    for _ in range(pool + 3):
        join(cid, "YES")
    p.run("fill_treasury", challenge_id=cid, side="YES", match_count=pool + 3, admin_id="adm")
    doc = show(engine, cid)
    assert len(doc["matches"]) == pool
    assert len({m["persona"] for m in doc["matches"]}) == pool
    assert doc["unmatched_yes"] == 3
    assert p.events(engine, "admin.treasury.fill_shortfall", challenge_id=cid)[0]["data"]["reasons"] == \
        ["personas_exhausted"]
    assert open_alert(engine, f"treasury:personas:{cid}")["kind"] == "persona_pool_exhausted"
    # Another fill finds no persona left: nothing more is staked.
    p.run("fill_treasury", challenge_id=cid, side="YES", match_count=1, admin_id="adm")
    assert len(show(engine, cid)["matches"]) == pool


def test_a_persona_is_used_once_per_challenge_by_the_database(engine):
    set_treasury(engine, 100 * STAKE)
    cid = open_challenge(max_risk=10 * STAKE)
    join(cid, "YES"), join(cid, "YES")
    p.run("fill_treasury", challenge_id=cid, side="YES", match_count=1, admin_id="adm")
    with engine.connect() as conn:
        m = conn.execute(text("SELECT * FROM treasury_matches WHERE challenge_id = :c"), {"c": cid}).one()
        other = conn.execute(text(
            "SELECT id, user_id FROM challenge_participants WHERE challenge_id = :c AND id <> :p"),
            {"c": cid, "p": m.participant_id}).one()
        with pytest.raises(IntegrityError, match="treasury_matches_persona_once"):
            conn.execute(text(
                "INSERT INTO treasury_matches (challenge_id, fill_id, participant_id, persona_id, "
                "user_id, user_side, stake) VALUES (:c, :f, :p, :persona, :u, 'YES', :s)"),
                {"c": cid, "f": m.fill_id, "p": other.id, "persona": m.persona_id, "u": other.user_id,
                 "s": STAKE})


def test_the_database_refuses_a_budget_overrun(engine):
    cid = open_challenge(max_risk=2 * STAKE)
    with engine.connect() as conn:
        with pytest.raises(IntegrityError, match="within_max_risk"):
            conn.execute(text("UPDATE challenge_treasury SET reserved = :r WHERE challenge_id = :c"),
                         {"r": 3 * STAKE, "c": cid})


def test_treasury_that_cannot_pay_creates_nothing_and_alerts(engine):
    cid = open_challenge(max_risk=10 * STAKE)
    users = [join(cid, "YES") for _ in range(3)]
    set_treasury(engine, 2 * STAKE)
    p.run("fill_treasury", challenge_id=cid, side="YES", match_count=3, admin_id="adm")
    doc = show(engine, cid)
    assert doc["matches"] == [] and doc["unmatched_yes"] == 3
    assert doc["treasury"]["allocated"] == 0 and doc["treasury"]["reserved"] == 0
    assert p.balance(engine, "treasury:NGN") == 2 * STAKE
    assert not p.events(engine, "match.found", challenge_id=cid)
    alert = open_alert(engine, "treasury:underfunded:NGN")
    assert alert["kind"] == "treasury_insufficient_funds" and alert["severity"] == "critical"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM treasury_fills WHERE challenge_id = :c"),
                            {"c": cid}).scalar_one() == "failed"
    # Funded again, the same users can be matched, and the alert clears.
    set_treasury(engine, 10 * STAKE)
    p.run("fill_treasury", challenge_id=cid, side="YES", match_count=3, admin_id="adm")
    assert [m["user_id"] for m in show(engine, cid)["matches"]] == users
    assert open_alert(engine, "treasury:underfunded:NGN") is None


# --- refusals change nothing ----------------------------------------------------------

def test_fill_beyond_the_budget_is_refused_and_changes_nothing(engine):
    set_treasury(engine, 100 * STAKE)
    cid = open_challenge(max_risk=STAKE)
    join(cid, "YES"), join(cid, "YES")
    p.run("fill_treasury", challenge_id=cid, side="YES", match_count=1, admin_id="adm")
    before = snapshot(engine, cid)
    with pytest.raises(Refused, match="budget exhausted"):
        p.run("fill_treasury", challenge_id=cid, side="YES", match_count=1, admin_id="adm")
    assert snapshot(engine, cid) == before


def test_fill_on_a_non_admin_challenge_is_refused_and_changes_nothing(engine):
    cid = open_challenge(admin=False)
    join(cid, "YES")
    before = snapshot(engine, cid)
    with pytest.raises(Refused, match="not admin-created"):
        p.run("fill_treasury", challenge_id=cid, side="YES", match_count=1, admin_id="adm")
    with pytest.raises(Refused, match="not admin-created"):
        p.run("configure_treasury", challenge_id=cid, max_risk=STAKE, notes="", admin_id="adm")
    assert snapshot(engine, cid) == before


def test_fill_on_a_resolved_challenge_is_refused_and_changes_nothing(engine):
    cid = open_challenge(max_risk=10 * STAKE)
    join(cid, "YES")
    p.run("resolve_challenge", challenge_id=cid, result="NO", resolved_by="adm")
    before = snapshot(engine, cid)
    with pytest.raises(Refused, match="already settled"):
        p.run("fill_treasury", challenge_id=cid, side="YES", match_count=1, admin_id="adm")
    with pytest.raises(Refused, match="already settled"):
        p.run("resolve_challenge", challenge_id=cid, result="YES", resolved_by="adm")
    p.fund_user("late-user", STAKE)
    before = snapshot(engine, cid)
    with pytest.raises(Refused):
        p.run("join_challenge", challenge_id=cid, user_id="late-user", side="NO")
    assert snapshot(engine, cid) == before


def test_fill_with_an_unknown_side_is_invalid_and_changes_nothing(engine):
    cid = open_challenge(max_risk=10 * STAKE)
    join(cid, "YES")
    before = snapshot(engine, cid)
    with pytest.raises(InvalidCommand, match="side"):
        p.run("fill_treasury", challenge_id=cid, side="MAYBE", match_count=1, admin_id="adm")
    assert snapshot(engine, cid) == before


def test_resolving_an_unknown_challenge_is_refused_and_changes_nothing(engine):
    before = snapshot(engine, "no-such-challenge")
    with pytest.raises(NotFound, match="does not exist"):
        p.run("resolve_challenge", challenge_id="no-such-challenge", result="YES", resolved_by="adm")
    assert snapshot(engine, "no-such-challenge") == before


def test_max_risk_below_the_allocation_is_refused(engine):
    set_treasury(engine, 100 * STAKE)
    cid = open_challenge(max_risk=5 * STAKE)
    join(cid, "YES"), join(cid, "YES")
    p.run("fill_treasury", challenge_id=cid, side="YES", match_count=2, admin_id="adm")
    before = snapshot(engine, cid)
    with pytest.raises(Refused, match="below what the treasury already committed"):
        p.run("configure_treasury", challenge_id=cid, max_risk=STAKE, notes="cut", admin_id="adm")
    assert snapshot(engine, cid) == before


# --- settlement -----------------------------------------------------------------------

def test_settlement_pays_winners_refunds_the_unpaired_and_empties_the_escrow(engine):
    set_treasury(engine, 100 * STAKE)
    cid = open_challenge(max_risk=STAKE)
    y1, y2, y3 = (join(cid, "YES") for _ in range(3))
    n1 = join(cid, "NO")  # pairs with y1
    p.run("fill_treasury", challenge_id=cid, side="YES", match_count=1, admin_id="adm")  # y2 v persona
    p.run("resolve_challenge", challenge_id=cid, result="YES", resolved_by="adm")
    bal = lambda u: p.balance(engine, f"user:{u}:NGN")  # noqa: E731
    assert (bal(y1), bal(n1), bal(y2), bal(y3)) == (2 * STAKE, 0, 2 * STAKE, STAKE)
    assert p.balance(engine, f"escrow:challenge:{cid}") == 0
    assert p.balance(engine, "treasury:NGN") == 99 * STAKE
    doc = show(engine, cid)
    assert doc["status"] == "settled"
    (match,) = doc["matches"]
    assert (match["user_id"], match["result"], match["treasury_payout"], match["pnl"]) == \
        (y2, "treasury_lost", 0, -STAKE)
    told = {e["recipient"]: e["data"] for e in p.events(engine, "challenge.settled", challenge_id=cid)}
    assert told[y1]["message"] == "You won ₦20.00" and told[y1]["amount"] == 2 * STAKE
    assert told[n1]["message"] == "You lost ₦10.00" and told[n1]["amount"] == STAKE
    assert told[y3]["outcome"] == "refunded"
    summary = p.events(engine, "admin.treasury.settlement", challenge_id=cid)
    assert len(summary) == 1
    assert {k: summary[0]["data"][k] for k in ("won", "lost", "refunded", "net_pnl")} == \
        {"won": 0, "lost": 1, "refunded": 0, "net_pnl": -STAKE}
    with engine.connect() as conn:
        assert ledger.check(conn)["ok"]


def test_void_refunds_everyone_and_the_treasury(engine):
    set_treasury(engine, 100 * STAKE)
    cid = open_challenge(max_risk=5 * STAKE)
    users = [join(cid, s) for s in ("YES", "YES", "NO", "YES")]
    p.run("fill_treasury", challenge_id=cid, side="YES", match_count=2, admin_id="adm")
    p.run("resolve_challenge", challenge_id=cid, result="VOID", resolved_by="adm")
    assert [p.balance(engine, f"user:{u}:NGN") for u in users] == [STAKE] * 4
    assert p.balance(engine, "treasury:NGN") == 100 * STAKE
    # Issue 14: the original's states — a void match ends refunded, with no result.
    assert {(m["status"], m["result"], m["pnl"]) for m in show(engine, cid)["matches"]} == \
        {("refunded", None, 0)}


def test_resolution_during_a_fill_drops_the_fill_and_refunds_the_held_users(engine):
    set_treasury(engine, 100 * STAKE)
    cid = open_challenge(max_risk=5 * STAKE)
    user = join(cid, "YES")
    p.run("fill_treasury", drain=False, challenge_id=cid, side="YES", match_count=1, admin_id="adm")
    p.run_pending(limit=1)  # personas assigned; match creation still queued
    held = p.pending()
    p.clear_pending()
    p.run("resolve_challenge", challenge_id=cid, result="NO", resolved_by="adm")
    for msg in held:  # the match creation arrives late
        p.run(msg.actor_name, **msg.kwargs)
    assert p.balance(engine, f"user:{user}:NGN") == STAKE
    assert p.balance(engine, "treasury:NGN") == 100 * STAKE
    assert show(engine, cid)["matches"] == []
    assert not p.events(engine, "match.found", challenge_id=cid)


def test_settlement_delivered_again_pays_nobody_twice(engine):
    cid = open_challenge()
    a, b = join(cid, "YES"), join(cid, "NO")
    p.run("resolve_challenge", drain=False, challenge_id=cid, result="NO", resolved_by="adm")
    (settle,) = p.pending()
    p.run_pending()
    p.run("settle_challenge", **settle.kwargs)  # redelivered
    p.run("settle_challenge", challenge_id=cid, request_id="another-request")  # resent
    assert (p.balance(engine, f"user:{a}:NGN"), p.balance(engine, f"user:{b}:NGN")) == (0, 2 * STAKE)
    assert len(p.events(engine, "admin.treasury.settlement", challenge_id=cid)) == 1


# --- views and reports ----------------------------------------------------------------

def test_dashboard_shows_allocation_pending_matches_and_realized_pnl(engine):
    set_treasury(engine, 100 * STAKE, "USD")
    with engine.connect() as conn:
        before = views.dashboard(conn, "USD")
    a = open_challenge(currency="USD", max_risk=4 * STAKE)
    b = open_challenge(currency="USD", max_risk=4 * STAKE)
    for cid in (a, b):
        join(cid, "YES", currency="USD"), join(cid, "YES", currency="USD")
        p.run("fill_treasury", challenge_id=cid, side="YES", match_count=2, admin_id="adm")
    p.run("resolve_challenge", challenge_id=a, result="NO", resolved_by="adm")  # treasury wins 2
    with engine.connect() as conn:
        doc = views.dashboard(conn, "USD")
    assert doc["total_matches"] - before["total_matches"] == 4
    assert doc["settlement_pending"] - before["settlement_pending"] == 2
    assert doc["net_pnl"] - before["net_pnl"] == 2 * STAKE
    assert doc["recent_settlements"][0]["challenge_id"] == a
    assert doc["recent_settlements"][0]["net_pnl"] == 2 * STAKE
    if before["active_challenges"] == 0:
        assert doc["total_allocated"] == 2 * STAKE and doc["utilization_percent"] == 50


def test_daily_summary_reports_the_day_and_defaults_to_yesterday(engine):
    set_treasury(engine, 100 * STAKE, "ISK")
    cid = open_challenge(currency="ISK", max_risk=3 * STAKE)
    join(cid, "NO", currency="ISK")
    p.run("fill_treasury", challenge_id=cid, side="NO", match_count=1, admin_id="adm")
    p.run("resolve_challenge", challenge_id=cid, result="YES", resolved_by="adm")
    today = datetime.now(ZoneInfo("UTC")).date()
    p.run("send_daily_summary", day=today.isoformat())
    report = p.events(engine, "admin.treasury.daily_summary", day=today.isoformat())[-1]["data"]
    isk = report["currencies"]["ISK"]
    assert isk["matches_created"] >= 1 and isk["won"] >= 1 and isk["net_pnl"] >= STAKE
    p.run("send_daily_summary")
    latest = p.events(engine, "admin.treasury.daily_summary")[-1]["data"]
    assert latest["day"] == (today - timedelta(days=1)).isoformat()
    assert "ISK" not in latest["currencies"] or latest["currencies"]["ISK"]["matches_created"] == 0


def test_personas_can_be_added_and_refused_twice(engine):
    code = uid("persona.")
    with engine.begin() as conn:
        added = persona_pool.add(conn, code, "Newcomer_plays", "casual")
    assert added["category"] == "casual"
    with engine.begin() as conn:
        with pytest.raises(Refused, match="already exists"):
            persona_pool.add(conn, code, "Again", "casual")
        with pytest.raises(Refused, match="unknown category"):
            persona_pool.add(conn, uid("x"), "Nope", "whale")
    with engine.connect() as conn:
        listed = persona_pool.listing(conn)
    assert code in {p_["code"] for p_ in listed}
    seeded = [p_ for p_ in listed if p_["code"].split(".")[0] == p_["category"]]
    assert len(seeded) == 49
    assert {p_["category"] for p_ in seeded} == {"big_stepper", "street_smart", "fanatic", "casual"}
    with engine.begin() as conn:  # leave the pool as the other tests expect it
        conn.execute(text("DELETE FROM shadow_personas WHERE code = :c"), {"c": code})


def test_treasury_alerts_clear_by_themselves_when_their_condition_clears(engine):
    from infra.challenges.conditions import treasury_balancing
    from services.conditions import CONDITIONS
    from infra.uow import UnitOfWork

    assert CONDITIONS["treasury_balancing"] is treasury_balancing

    def sweep():
        with UnitOfWork(engine=engine, broker=p._COLLECTOR) as uow:
            treasury_balancing(uow)
            uow.commit()

    cid = open_challenge(max_risk=10 * STAKE)
    join(cid, "YES")
    set_treasury(engine, 0)
    p.run("fill_treasury", challenge_id=cid, side="YES", match_count=1, admin_id="adm")
    assert open_alert(engine, "treasury:underfunded:NGN")
    sweep()
    assert open_alert(engine, "treasury:underfunded:NGN")  # still cannot pay
    set_treasury(engine, STAKE)
    sweep()
    assert open_alert(engine, "treasury:underfunded:NGN") is None

    with engine.connect() as conn:
        pool = conn.execute(text("SELECT count(*) FROM shadow_personas WHERE active")).scalar_one()
    set_treasury(engine, 1_000 * STAKE)
    big = open_challenge(max_risk=1_000 * STAKE)
    for _ in range(pool + 1):
        join(big, "NO")
    p.run("fill_treasury", challenge_id=big, side="NO", match_count=pool + 1, admin_id="adm")
    sweep()
    assert open_alert(engine, f"treasury:personas:{big}")
    code = uid("extra.")
    with engine.begin() as conn:
        persona_pool.add(conn, code, "Extra_plays", "casual")
    try:
        sweep()
        assert open_alert(engine, f"treasury:personas:{big}") is None
    finally:
        with engine.begin() as conn:
            conn.execute(text("UPDATE shadow_personas SET active = false WHERE code = :c"), {"c": code})

    # A used-up budget clears once it funds one stake again (exactly one: the boundary).
    spent = open_challenge(max_risk=STAKE)
    join(spent, "YES")
    p.run("fill_treasury", challenge_id=spent, side="YES", match_count=1, admin_id="adm")
    assert open_alert(engine, f"treasury:budget:{spent}")
    with engine.begin() as conn:  # raised by hand, short of a stake by one
        conn.execute(text("UPDATE challenge_treasury SET max_risk = :m WHERE challenge_id = :c"),
                     {"m": 2 * STAKE - 1, "c": spent})
    sweep()
    assert open_alert(engine, f"treasury:budget:{spent}")
    with engine.begin() as conn:
        conn.execute(text("UPDATE challenge_treasury SET max_risk = :m WHERE challenge_id = :c"),
                     {"m": 2 * STAKE, "c": spent})
    sweep()
    assert open_alert(engine, f"treasury:budget:{spent}") is None


def open_alert(engine, key: str):
    with engine.connect() as conn:
        row = conn.execute(text("SELECT kind, severity, subject FROM alerts "
                                "WHERE dedupe_key = :k AND status <> 'resolved'"), {"k": key}).one_or_none()
    return None if row is None else row._asdict()
