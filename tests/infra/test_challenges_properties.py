"""Property: whatever the joins, fills and result, the money adds up (SPEC §1).

Random challenges run through the real actors and PostgreSQL; an independent
model of pairing, filling and settlement says what every wallet, the escrow
and the treasury must hold at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from domain.errors import Refused
from infra import ledger
from tests.harness import uid
from tests.infra import challenges_pipeline as p
from tests.infra.test_challenges import set_treasury

sides = st.sampled_from(["YES", "NO"])


@dataclass
class Seat:
    user: str
    side: str
    opponent: str | None = None  # user | treasury


@st.composite
def scenarios(draw):
    stake = draw(st.integers(1, 50_000))
    ops = draw(st.lists(st.one_of(st.tuples(st.just("join"), sides),
                                  st.tuples(st.just("fill"), sides, st.integers(1, 6))),
                        max_size=24))
    return {
        "stake": stake,
        "admin": draw(st.sampled_from([True, True, True, False])),
        "max_risk": draw(st.integers(1, 12)) * stake + draw(st.integers(0, stake - 1)),
        "treasury": draw(st.integers(0, 10)) * stake,
        "ops": ops,
        "result": draw(st.sampled_from(["YES", "NO", "VOID"])),
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenarios())
def test_escrow_ends_at_zero_and_everybody_is_paid_exactly_once(engine, sc):
    p.clear_pending()
    stake, cid = sc["stake"], uid("c")
    set_treasury(engine, sc["treasury"])
    with engine.connect() as conn:
        personas = conn.execute(text("SELECT count(*) FROM shadow_personas WHERE active")).scalar_one()
    p.run("open_challenge", challenge_id=cid, title="prop", currency="NGN", stake=stake,
          admin_created=sc["admin"])
    if sc["admin"]:
        p.run("configure_treasury", challenge_id=cid, max_risk=sc["max_risk"], notes="", admin_id="a")

    seats: list[Seat] = []
    treasury, allocated, used = sc["treasury"], 0, 0
    waiting = lambda side: [s for s in seats if s.side == side and s.opponent is None]  # noqa: E731
    for op in sc["ops"]:
        if op[0] == "join":
            seat = Seat(uid(), op[1])
            p.fund_user(seat.user, stake)
            p.run("join_challenge", challenge_id=cid, user_id=seat.user, side=seat.side)
            other = waiting("NO" if seat.side == "YES" else "YES")
            seats.append(seat)
            if other:
                seat.opponent = other[0].opponent = "user"
            continue
        _, side, count = op
        if not sc["admin"] or sc["max_risk"] - allocated < stake:
            try:
                p.run("fill_treasury", challenge_id=cid, side=side, match_count=count, admin_id="a")
            except Refused:
                continue
            raise AssertionError("a fill the budget cannot fund was accepted")
        p.run("fill_treasury", challenge_id=cid, side=side, match_count=count, admin_id="a")
        n = min(count, len(waiting(side)), (sc["max_risk"] - allocated) // stake, personas - used)
        if n and treasury >= n * stake:
            for seat in waiting(side)[:n]:
                seat.opponent = "treasury"
            treasury, allocated, used = treasury - n * stake, allocated + n * stake, used + n

    p.run("resolve_challenge", challenge_id=cid, result=sc["result"], resolved_by="a")

    result, expected_pnl = sc["result"], 0
    with engine.connect() as conn:
        for seat in seats:
            if result == "VOID" or seat.opponent is None:
                payout = stake
            else:
                payout = 2 * stake if seat.side == result else 0
            if seat.opponent == "treasury" and result != "VOID":
                expected_pnl += -stake if seat.side == result else stake
            assert ledger.balances(conn, [f"user:{seat.user}:NGN"])[f"user:{seat.user}:NGN"] == payout
            credits = conn.execute(text(
                "SELECT count(*) FROM ledger_entries e JOIN accounts a ON a.id = e.account_id "
                "JOIN ledger_transactions t ON t.id = e.transaction_id "
                "WHERE a.code = :acc AND t.kind = 'challenge_settlement'"),
                {"acc": f"user:{seat.user}:NGN"}).scalar_one()
            assert credits == (1 if payout else 0)  # nobody paid twice
        assert ledger.balances(conn, [f"escrow:challenge:{cid}"]).get(f"escrow:challenge:{cid}", 0) == 0
        pnl = conn.execute(text("SELECT COALESCE(sum(pnl), 0) FROM treasury_matches "
                                "WHERE challenge_id = :c"), {"c": cid}).scalar_one()
        assert pnl == expected_pnl
        treasury_now = ledger.balances(conn, ["treasury:NGN"])["treasury:NGN"]
        assert treasury_now - sc["treasury"] == expected_pnl  # treasury P&L = sum of its matches
        assert ledger.check(conn)["ok"]
    told = p.events(engine, "challenge.settled", challenge_id=cid)
    assert sorted(e["recipient"] for e in told) == sorted(s.user for s in seats)
    assert len(p.events(engine, "admin.treasury.settlement", challenge_id=cid)) == 1
