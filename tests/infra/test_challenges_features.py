"""Issue 14 on treasury balancing, on the real PostgreSQL through the real actor code:
join limits, refunded void matches, the human lines, a settlement that fails for good
and its retry (nobody paid twice)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from domain.challenges import settlement_failed_alert_key
from domain.errors import Refused
from infra.cli import output
from infra.cli.main import cli
from infra import ledger
from infra.challenges import views
from services import challenges as challenge_service
from tests.harness import uid
from tests.infra import challenges_pipeline as p
from tests.infra.test_challenges import STAKE, join, set_treasury, show, snapshot

pytestmark = pytest.mark.usefixtures("_no_leftover_steps")


def human(*args: str) -> str:
    """``ballast ARGS`` for people, on a wide console (rich wraps at 80 columns)."""
    width = output.console.width
    output.console.width = 500
    try:
        return CliRunner().invoke(cli, list(args)).output
    finally:
        output.console.width = width


@pytest.fixture
def _no_leftover_steps():
    p.clear_pending()
    yield
    p.clear_pending()


def open_limited(**limits) -> str:
    cid = uid("c")
    p.run("open_challenge", challenge_id=cid, title="Limited", currency="NGN", stake=STAKE,
          admin_created=True, **limits)
    return cid


def alert(engine, key: str):
    with engine.connect() as conn:
        return conn.execute(text("SELECT kind, severity, status, data FROM alerts "
                                 "WHERE dedupe_key = :k ORDER BY id DESC LIMIT 1"), {"k": key}).one_or_none()


# --- limits on joins --------------------------------------------------------------------

def test_a_join_beyond_max_participants_is_refused_with_the_reason_and_changes_nothing(engine):
    cid = open_limited(max_participants=2)
    join(cid, "YES")
    join(cid, "NO")
    user = uid()
    p.fund_user(user, STAKE)
    before = snapshot(engine, cid)
    with pytest.raises(Refused, match=r"is full \(2 of max_participants 2\)"):
        p.run("join_challenge", challenge_id=cid, user_id=user, side="YES")
    assert snapshot(engine, cid) == before
    assert p.balance(engine, f"user:{user}:NGN") == STAKE
    doc = show(engine, cid)
    assert (doc["max_participants"], doc["closes_at"], doc["user_count"]) == (2, None, 2)
    shown = human("challenge", "show", cid)
    assert "at most 2 participants" in shown and "2 user(s)" in shown


def test_a_join_after_closes_at_is_refused_and_show_reports_the_limit(engine):
    closes = datetime.now(timezone.utc) + timedelta(hours=1)
    cid = open_limited(closes_at=closes.isoformat())
    join(cid, "YES")  # before the close: taken
    assert show(engine, cid)["closes_at"] == closes.isoformat()
    with engine.begin() as conn:  # the hour passes
        conn.execute(text("UPDATE challenges SET closes_at = now() - interval '1 second' "
                          "WHERE id = :c"), {"c": cid})
    user = uid()
    p.fund_user(user, STAKE)
    before = snapshot(engine, cid)
    with pytest.raises(Refused, match=f"cannot join: challenge {cid} closed at"):
        p.run("join_challenge", challenge_id=cid, user_id=user, side="NO")
    assert snapshot(engine, cid) == before


def test_a_challenge_cannot_open_already_closed_and_a_resend_with_other_limits_is_refused(engine):
    with pytest.raises(Refused, match="already closed"):
        open_limited(closes_at="2020-01-01T00:00:00+00:00")
    cid = open_limited(max_participants=5)
    with pytest.raises(Refused, match="other terms"):
        p.run("open_challenge", challenge_id=cid, title="Limited", currency="NGN", stake=STAKE,
              admin_created=True, max_participants=6)
    p.run("open_challenge", challenge_id=cid, title="Limited", currency="NGN", stake=STAKE,
          admin_created=True, max_participants=5)  # the same terms: harmless


def test_imbalance_view_gives_user_count_potential_and_fillable_matches(engine):
    set_treasury(engine, 100 * STAKE)
    cid = open_limited()
    p.run("configure_treasury", challenge_id=cid, max_risk=2 * STAKE, notes="", admin_id="adm")
    for side in ("YES", "YES", "YES", "YES", "NO"):
        join(cid, side)
    doc = show(engine, cid)
    # 4 YES, 1 NO: one user pair, 3 YES waiting; budget for 2 persona matches.
    assert (doc["user_count"], doc["potential_matches"], doc["fillable"]) == (5, 0, 2)
    with engine.begin() as conn:  # a YES and a NO both waiting (as while a join is in flight)
        conn.execute(text("UPDATE challenge_participants SET paired_with = NULL WHERE challenge_id = :c"),
                     {"c": cid})
    doc = show(engine, cid)
    assert (doc["unmatched_yes"], doc["unmatched_no"], doc["potential_matches"]) == (4, 1, 1)


# --- void: refunded ----------------------------------------------------------------------

def test_a_void_challenges_treasury_matches_end_refunded_with_stake_back_and_zero_pnl(engine):
    set_treasury(engine, 100 * STAKE)
    cid = open_limited()
    p.run("configure_treasury", challenge_id=cid, max_risk=5 * STAKE, notes="", admin_id="adm")
    users = [join(cid, s) for s in ("YES", "YES", "NO", "YES")]
    p.run("fill_treasury", challenge_id=cid, side="YES", match_count=2, admin_id="adm")
    p.run("resolve_challenge", challenge_id=cid, result="VOID", resolved_by="adm")
    matches = show(engine, cid)["matches"]
    assert [(m["status"], m["result"], m["treasury_payout"], m["pnl"]) for m in matches] == \
        [("refunded", None, STAKE, 0)] * 2
    assert [p.balance(engine, f"user:{u}:NGN") for u in users] == [STAKE] * 4
    assert p.balance(engine, "treasury:NGN") == 100 * STAKE
    (summary,) = p.events(engine, "admin.treasury.settlement", challenge_id=cid)
    assert (summary["data"]["refunded"], summary["data"]["net_pnl"]) == (2, 0)
    assert summary["data"]["message"] == "Settlement: 0 won, 0 lost, 2 refunded, ₦0.00"
    with engine.connect() as conn:
        recent = views.dashboard(conn, "NGN")["recent_settlements"]
    assert [r["refunded"] for r in recent if r["challenge_id"] == cid] == [2]


def test_notifications_carry_the_human_line_next_to_the_data(engine):
    set_treasury(engine, 100 * STAKE)
    cid = open_limited()
    p.run("configure_treasury", challenge_id=cid, max_risk=5 * STAKE, notes="", admin_id="adm")
    y1, n1, y2 = join(cid, "YES"), join(cid, "NO"), join(cid, "YES")
    p.run("fill_treasury", challenge_id=cid, side="YES", match_count=1, admin_id="adm")
    found = {e["recipient"]: e["data"] for e in p.events(engine, "match.found", challenge_id=cid)}
    assert found[y1]["message"] == "You've been matched with another player"
    assert found[y2]["message"] == f"You've been matched with {found[y2]['opponent']}"
    (created,) = p.events(engine, "admin.treasury.match_created", challenge_id=cid)
    assert created["data"]["message"] == "1 match filled on YES" and created["data"]["created"] == 1
    p.run("resolve_challenge", challenge_id=cid, result="NO", resolved_by="adm")
    (summary,) = p.events(engine, "admin.treasury.settlement", challenge_id=cid)
    assert summary["data"]["message"] == "Settlement: 1 won, 0 lost, +₦10.00"


# --- a settlement that fails for good ------------------------------------------------------

FAIL_ON_USER = """
CREATE OR REPLACE FUNCTION test_fail_settlement() RETURNS trigger AS $$
BEGIN
    IF NEW.settled_at IS NOT NULL AND NEW.user_id = '{user}' THEN
        RAISE EXCEPTION 'injected: could not serialize access' USING ERRCODE = '40001';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER test_fail_settlement_{tag} BEFORE UPDATE ON challenge_participants
    FOR EACH ROW EXECUTE FUNCTION test_fail_settlement();
"""


def test_a_settlement_failing_for_good_is_visible_and_its_retry_pays_nobody_twice(engine, monkeypatch):
    monkeypatch.setattr(challenge_service, "SETTLE_BATCH", 2)
    set_treasury(engine, 100 * STAKE)
    cid = open_limited()
    p.run("configure_treasury", challenge_id=cid, max_risk=5 * STAKE, notes="", admin_id="adm")
    users = [join(cid, s) for s in ("YES", "NO", "YES", "YES", "YES")]  # pair, 3 waiting
    p.run("fill_treasury", challenge_id=cid, side="YES", match_count=1, admin_id="adm")
    tag = uid("t")
    with engine.begin() as conn:  # the 4th seat (second batch) cannot be written
        conn.execute(text(FAIL_ON_USER.format(user=users[3], tag=tag)))
    try:
        with pytest.raises(Exception, match="injected"):
            p.run("resolve_challenge", challenge_id=cid, result="NO", resolved_by="adm")
        doc = show(engine, cid)
        assert doc["status"] == "settlement_failed" and "injected" in doc["settlement_failure"]
        first_batch = [p.balance(engine, f"user:{u}:NGN") for u in users[:2]]
        assert first_batch == [0, 0]  # one transaction: n1's winnings of the first batch rolled back
        assert p.balance(engine, f"escrow:challenge:{cid}") == 6 * STAKE  # every stake still held
        a = alert(engine, settlement_failed_alert_key(cid))
        assert (a.kind, a.severity, a.status) == ("challenge_settlement_failed", "critical", "open")
        with pytest.raises(Refused, match="already settlement_failed"):
            p.run("join_challenge", challenge_id=cid, user_id=uid(), side="NO")
        shown = human("challenge", "show", cid)
        assert "settlement failed" in shown and f"ballast challenge settle {cid}" in shown
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TRIGGER test_fail_settlement_{tag} ON challenge_participants"))

    # The operator's retry (`ballast challenge settle`) hands a new settle_challenge on.
    p.run("retry_challenge_settlement", challenge_id=cid, retried_by="ops-ada", drain=False)
    with pytest.raises(Refused, match="only a settlement_failed"):  # a second retry: nothing
        p.run("retry_challenge_settlement", challenge_id=cid, retried_by="ops-ada", drain=False)
    assert [m.actor_name for m in p.pending()] == ["settle_challenge"]
    p.run_pending()
    doc = show(engine, cid)
    assert (doc["status"], doc["settlement_retries"]) == ("settled", 1)
    # y1 lost, n1 won both stakes, y2 vs persona lost (NO won), y3 and y4 refunded: once each.
    assert [p.balance(engine, f"user:{u}:NGN") for u in users] == [0, 2 * STAKE, 0, STAKE, STAKE]
    assert p.balance(engine, f"escrow:challenge:{cid}") == 0
    assert p.balance(engine, "treasury:NGN") == 101 * STAKE
    assert len(p.events(engine, "admin.treasury.settlement", challenge_id=cid)) == 1
    told = [e["recipient"] for e in p.events(engine, "challenge.settled", challenge_id=cid)]
    assert sorted(told) == sorted(users)  # each user told once
    assert alert(engine, settlement_failed_alert_key(cid)).status == "resolved"
    with engine.connect() as conn:
        assert ledger.check(conn)["ok"]
