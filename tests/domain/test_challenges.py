"""Treasury balancing rules, pure (SPEC §1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import challenges as rules
from domain.challenges import (
    Challenge,
    SideTally,
    TreasuryConfig,
    fillable,
    imbalance,
    pair_first_come,
    plan_fill,
    settle_treasury_match,
    settle_user,
)
from domain.errors import Refused

sides = st.sampled_from(["YES", "NO"])
results = st.sampled_from(["YES", "NO", "VOID"])
stakes = st.integers(min_value=1, max_value=10**12)


# --- imbalance ------------------------------------------------------------------------

def test_imbalance_names_the_heavier_side_and_the_gap():
    bal = imbalance(SideTally(5, 5_000, 3), SideTally(2, 2_000, 0))
    assert (bal.imbalanced_side, bal.gap) == ("YES", 3_000)
    assert (bal.unmatched_yes, bal.unmatched_no) == (3, 0)
    assert bal.match_rate == 57  # 4 of 7 paired, floor


def test_balanced_challenge_has_no_imbalanced_side():
    bal = imbalance(SideTally(2, 2_000, 0), SideTally(2, 2_000, 0))
    assert bal.imbalanced_side is None and bal.gap == 0 and bal.match_rate == 100


def test_empty_challenge_has_zero_match_rate():
    assert imbalance(SideTally(), SideTally()).match_rate == 0


@given(st.integers(0, 500), st.integers(0, 500), stakes)
def test_match_rate_is_an_integer_percent_of_paired_participants(yes, no, stake):
    paired = min(yes, no)
    bal = imbalance(SideTally(yes, yes * stake, yes - paired), SideTally(no, no * stake, no - paired))
    assert isinstance(bal.match_rate, int) and 0 <= bal.match_rate <= 100
    if yes + no:
        assert bal.match_rate == 2 * paired * 100 // (yes + no)
    assert bal.gap == abs(yes - no) * stake


# --- pairing --------------------------------------------------------------------------

@given(st.lists(sides, max_size=200))
def test_first_come_pairing_pairs_the_earliest_of_each_side(joins):
    yes = [i for i, s in enumerate(joins) if s == "YES"]
    no = [i for i, s in enumerate(joins) if s == "NO"]
    pairs = pair_first_come(yes, no)
    assert len(pairs) == min(len(yes), len(no))
    assert [a for a, _ in pairs] == yes[: len(pairs)]
    assert [b for _, b in pairs] == no[: len(pairs)]


# --- the budget -----------------------------------------------------------------------

def test_max_risk_below_what_is_committed_is_refused():
    cfg = TreasuryConfig(10_000, allocated=6_000, reserved=2_000)
    with pytest.raises(Refused, match="below what the treasury already committed"):
        cfg.reconfigure(7_999, "too low")
    assert cfg.reconfigure(8_000, "exactly").max_risk == 8_000


def test_budget_that_cannot_fund_one_stake_is_refused():
    cfg = TreasuryConfig(10_000, allocated=9_500)
    with pytest.raises(Refused, match="budget exhausted"):
        cfg.ensure_can_fund(1_000, "c1")
    cfg.ensure_can_fund(500, "c1")


def test_allocation_moves_reserved_into_allocated():
    cfg = TreasuryConfig(10_000).reserve(3_000).allocate(3_000, 3)
    assert (cfg.allocated, cfg.reserved, cfg.filled_count, cfg.remaining) == (3_000, 0, 3, 7_000)


def test_reserving_beyond_the_budget_is_refused():
    with pytest.raises(Refused):
        TreasuryConfig(1_000, reserved=600).reserve(500)


# --- filling --------------------------------------------------------------------------

@given(match_count=st.integers(1, 60), waiting=st.integers(0, 60), personas=st.integers(0, 60),
       available=st.integers(0, 10**6), stake=st.integers(1, 10**5))
def test_fill_takes_the_smallest_limit_and_names_every_binding_one(match_count, waiting, personas,
                                                                    available, stake):
    users = [f"u{i}" for i in range(waiting)]
    pool = [f"p{i}" for i in range(personas)]
    plan = plan_fill(challenge_id="c", match_count=match_count, waiting=users,
                     unused_personas=pool, available=available, stake=stake)
    n = min(match_count, waiting, personas, available // stake)
    assert plan.n == n and plan.shortfall == match_count - n
    assert n * stake <= available
    assert [u for u, _ in plan.pairs] == users[:n]  # the earliest users
    assert len({p for _, p in plan.pairs}) == n  # no persona twice
    assert set(p for _, p in plan.pairs) <= set(pool)
    expected = set()
    if n < match_count:
        expected = {r for r, lim in ((rules.SHORTFALL_NO_USERS, waiting),
                                     (rules.SHORTFALL_BUDGET, available // stake),
                                     (rules.SHORTFALL_PERSONAS, personas)) if lim == n}
    assert set(plan.reasons) == expected


def test_persona_choice_is_reproducible_per_challenge_and_differs_between_challenges():
    pool = [f"persona{i}" for i in range(49)]
    a1 = rules.persona_order("challenge-a", pool)
    a2 = rules.persona_order("challenge-a", list(reversed(pool)))
    b = rules.persona_order("challenge-b", pool)
    assert a1 == a2
    assert a1 != b
    assert a1 != pool  # shuffled, not the pool's order


def test_adding_a_persona_keeps_the_order_of_the_others():
    pool = [f"persona{i}" for i in range(49)]
    before = rules.persona_order("c", pool)
    after = rules.persona_order("c", pool + ["newcomer"])
    assert [p for p in after if p != "newcomer"] == before


# --- settlement -----------------------------------------------------------------------

def test_paired_winner_takes_both_stakes_and_loser_gets_nothing():
    assert settle_user(stake=500, side="YES", result="YES", opponent="user") == rules.UserSettlement("won", 1000)
    assert settle_user(stake=500, side="NO", result="YES", opponent="user") == rules.UserSettlement("lost", 0)


def test_unpaired_user_gets_the_stake_back_whatever_the_result():
    for result in ("YES", "NO", "VOID"):
        assert settle_user(stake=500, side="YES", result=result, opponent=None).outcome == "refunded"
        assert settle_user(stake=500, side="YES", result=result, opponent=None).payout == 500


def test_void_refunds_everyone_treasury_included():
    assert settle_user(stake=500, side="NO", result="VOID", opponent="treasury").payout == 500
    # The original's states: a void match ends refunded, with no result, its stake back, P&L 0.
    refunded = settle_treasury_match(stake=500, user_side="NO", result="VOID")
    assert refunded == rules.MatchSettlement(None, 500, 0)
    assert refunded.status == "refunded"
    assert settle_treasury_match(stake=500, user_side="NO", result="NO").status == "settled"


def test_treasury_pnl_is_plus_stake_won_minus_stake_lost():
    assert settle_treasury_match(stake=700, user_side="YES", result="NO") == rules.MatchSettlement("treasury_won", 1400, 700)
    assert settle_treasury_match(stake=700, user_side="YES", result="YES") == rules.MatchSettlement("treasury_lost", 0, -700)


@given(stake=stakes, result=results,
       seats=st.lists(st.tuples(sides, st.sampled_from(["user", "treasury", None])), max_size=60))
def test_escrow_pays_out_exactly_what_came_in(stake, result, seats):
    # Build a consistent challenge: user-user pairs come in twos on opposite sides.
    people = []
    for side, opponent in seats:
        if opponent == "user":
            people += [(side, "user"), (rules.opposite(side), "user")]
        else:
            people.append((side, opponent))
    stakes_in = stake * len(people) + stake * sum(1 for _, o in people if o == "treasury")
    paid_users = sum(settle_user(stake=stake, side=s, result=result, opponent=o).payout
                     for s, o in people)
    matches = [settle_treasury_match(stake=stake, user_side=s, result=result)
               for s, o in people if o == "treasury"]
    assert paid_users + sum(m.payout for m in matches) == stakes_in
    outcome = rules.treasury_outcome(matches, stake)
    assert outcome.net_pnl == sum(m.pnl for m in matches) == outcome.won_amount - outcome.lost_amount
    assert outcome.won + outcome.lost + outcome.refunded == len(matches)


def test_users_are_told_the_true_amount():
    won = settle_user(stake=150_000, side="YES", result="YES", opponent="treasury")
    assert rules.settlement_notice(won, 150_000, "NGN") == (300_000, "You won ₦3,000.00")
    lost = settle_user(stake=150_000, side="NO", result="YES", opponent="user")
    assert rules.settlement_notice(lost, 150_000, "NGN") == (150_000, "You lost ₦1,500.00")
    back = settle_user(stake=5, side="NO", result="VOID", opponent="user")
    assert rules.settlement_notice(back, 5, "TOKEN") == (5, "Your stake of 5 TOKEN was refunded")


# --- the challenge --------------------------------------------------------------------

def test_resolving_twice_is_refused():
    c = Challenge("c1", "t", "NGN", 100, True).resolve("YES")
    assert (c.status, c.result) == ("resolved", "YES")
    with pytest.raises(Refused, match="already resolved"):
        c.resolve("NO")


def test_treasury_only_balances_admin_challenges():
    with pytest.raises(Refused, match="not admin-created"):
        Challenge("c1", "t", "NGN", 100, False).ensure_admin_created("fill")


@settings(max_examples=50)
@given(st.integers(-10**9, 10**9))
def test_amounts_format_exactly_with_a_symbol(amount):
    text = rules.format_amount(amount, "NGN")
    digits = text.replace("₦", "").replace(",", "").replace(".", "")
    assert int(digits) == amount


# --- limits on joins (issue 14) ---------------------------------------------------------

from datetime import datetime, timedelta, timezone  # noqa: E402

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)


@given(offset_s=st.integers(-10**6, 10**6), cap=st.one_of(st.none(), st.integers(1, 50)),
       joined=st.integers(0, 60))
def test_a_join_is_refused_exactly_at_or_after_the_close_and_at_the_cap(offset_s, cap, joined):
    closes = NOW + timedelta(seconds=offset_s)
    c = Challenge("c1", "t", "NGN", 100, True, closes_at=closes, max_participants=cap)
    closed = NOW >= closes
    full = cap is not None and joined >= cap
    if closed or full:
        with pytest.raises(Refused, match="closed at" if closed else "is full"):
            c.ensure_can_join(NOW, joined)
    else:
        c.ensure_can_join(NOW, joined)


def test_a_challenge_without_limits_takes_any_join_until_resolved():
    c = Challenge("c1", "t", "NGN", 100, True)
    c.ensure_can_join(NOW + timedelta(days=10_000), 10**6)
    with pytest.raises(Refused, match="already resolved"):
        c.resolve("YES").ensure_can_join(NOW, 0)


def test_a_challenge_does_not_open_already_closed_and_limits_are_part_of_its_terms():
    with pytest.raises(Refused, match="already closed"):
        Challenge("c1", "t", "NGN", 100, True, closes_at=NOW).check_new(NOW)
    Challenge("c1", "t", "NGN", 100, True, closes_at=NOW + timedelta(seconds=1)).check_new(NOW)
    base = Challenge("c1", "t", "NGN", 100, True)
    assert not base.same_terms(Challenge("c1", "t", "NGN", 100, True, max_participants=3))
    assert not base.same_terms(Challenge("c1", "t", "NGN", 100, True, closes_at=NOW))


def test_only_a_failed_settlement_is_retried():
    failed = Challenge("c1", "t", "NGN", 100, True, status="settlement_failed", result="NO")
    assert failed.retry_settlement().status == "resolved"
    for status in ("open", "resolved", "settled"):
        with pytest.raises(Refused, match="only a settlement_failed"):
            Challenge("c1", "t", "NGN", 100, True, status=status).retry_settlement()


# --- the imbalance view's extra counts ------------------------------------------------

tallies = st.builds(lambda n, u: SideTally(n, n * 100, min(u, n)), st.integers(0, 500), st.integers(0, 500))


@given(yes=tallies, no=tallies)
def test_user_count_and_potential_matches(yes, no):
    bal = imbalance(yes, no)
    assert bal.user_count == yes.count + no.count
    assert bal.potential_matches == min(yes.unmatched, no.unmatched)
    assert 0 <= bal.potential_matches <= min(bal.unmatched_yes, bal.unmatched_no)


@given(waiting=st.integers(0, 100), available=st.integers(-1000, 10**6), stake=st.integers(1, 10**4),
       personas=st.integers(0, 60))
def test_fillable_is_the_fill_plans_n(waiting, available, stake, personas):
    n = rules.fillable(waiting, available, stake, personas)
    plan = plan_fill(challenge_id="c", match_count=10**6, waiting=list(range(waiting)),
                     unused_personas=list(range(personas)), available=available, stake=stake)
    assert n == plan.n


# --- the human lines ---------------------------------------------------------------------

def test_notifications_carry_the_originals_lines():
    assert rules.matched_message("Tunde_stakes") == "You've been matched with Tunde_stakes"
    assert rules.filled_message(3, "YES") == "3 matches filled on YES"
    assert rules.filled_message(1, "NO") == "1 match filled on NO"
    outcome = rules.TreasuryOutcome(matches=15, won=12, lost=3, refunded=0, won_amount=0,
                                    lost_amount=0, refunded_amount=0, payout=0, net_pnl=850_000)
    assert rules.settlement_message(outcome, "NGN") == "Settlement: 12 won, 3 lost, +₦8,500.00"
    loss = rules.TreasuryOutcome(4, 1, 2, 1, 0, 0, 0, 0, -150_000)
    assert rules.settlement_message(loss, "NGN") == "Settlement: 1 won, 2 lost, 1 refunded, -₦1,500.00"


@given(won=st.integers(0, 10**4), lost=st.integers(0, 10**4), stake=stakes)
def test_the_settlement_line_states_the_signed_net_pnl(won, lost, stake):
    matches = [rules.MatchSettlement("treasury_won", 2 * stake, stake)] * won + \
        [rules.MatchSettlement("treasury_lost", 0, -stake)] * lost
    outcome = rules.treasury_outcome(matches, stake)
    line = rules.settlement_message(outcome, "NGN")
    amount = line.rsplit(", ", 1)[1]
    digits = int(amount.lstrip("+").replace("₦", "").replace(",", "").replace(".", ""))
    assert digits == (won - lost) * stake
    assert amount.startswith("+") == ((won - lost) * stake > 0)


@given(max_risk=st.integers(0, 10**9), allocated=st.integers(0, 10**9),
       reserved=st.integers(0, 10**9), stake=st.integers(1, 10**6))
def test_a_budget_funds_a_stake_exactly_when_a_fill_could_use_it(max_risk, allocated, reserved,
                                                                  stake):
    """``funds`` (the fill's check, the budget alert and its clearing) and the fill plan's
    budget limit (``fillable``) are one rule."""
    cfg = TreasuryConfig(max_risk, allocated, reserved)
    assert cfg.funds(stake) == (fillable(1, cfg.available, stake, 1) == 1)
