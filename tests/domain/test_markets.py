"""Parimutuel distribution, pure (SPEC §2): the money is conserved, floors, breakage, refunds."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import InvalidCommand, LedgerError, Refused
from domain.markets import (
    CLOSED,
    SETTLED,
    Commitment,
    Market,
    Outcome,
    breakage,
    check_fees,
    distribute,
    line,
    terms,
)

OPTIONS = ["a", "b", "c", "d"]

amounts = st.integers(min_value=1, max_value=10**12)
commitment_lists = st.lists(
    st.tuples(st.sampled_from(["u1", "u2", "u3", "u4", "u5"]), st.sampled_from(OPTIONS), amounts),
    min_size=1, max_size=60,
).map(lambda rows: [Commitment(f"c{i}", u, o, a) for i, (u, o, a) in enumerate(rows)])
house_fees = st.integers(min_value=0, max_value=9_500)
creator_fees = st.integers(min_value=100, max_value=500)
outcomes = st.one_of(st.sampled_from(OPTIONS).map(Outcome.winner), st.just(Outcome.void()))


def binary(status="open", **kw) -> Market:
    m = Market.open("m1", "binary", ["will", "wont"], "NGN", "creator", 200, **kw)
    return m if status == "open" else Market(**{**_fields(m), "status": status})


def multi() -> Market:
    return Market.open("m2", "multi", ["red", "green", "blue"], "NGN", "creator", 300)


def _fields(m: Market) -> dict:
    return {f: getattr(m, f) for f in m.__dataclass_fields__}


# --- properties -----------------------------------------------------------------------

@settings(max_examples=400)
@given(commitment_lists, outcomes, house_fees, creator_fees)
def test_payouts_fees_and_breakage_add_up_to_the_pool_exactly(cs, outcome, house, creator):
    d = distribute(cs, outcome, house, creator)
    t = d.terms
    assert t.pool == sum(c.amount for c in cs)
    assert d.paid + t.house_fee + t.creator_fee + d.breakage == t.pool
    assert all(type(x) is int for x in (d.paid, t.house_fee, t.creator_fee, d.breakage))
    assert d.breakage >= 0


@settings(max_examples=400)
@given(commitment_lists, st.sampled_from(OPTIONS), house_fees, creator_fees)
def test_every_winner_gets_at_least_its_exact_share_minus_one_minor_unit(cs, winner, house, creator):
    d = distribute(cs, Outcome.winner(winner), house, creator)
    t = d.terms
    if t.kind != "resolved":
        return
    for ln in d.lines:
        if ln.result != "won":
            assert ln.payout == 0 and ln.profit == -ln.commitment.amount
            continue
        exact = Fraction(ln.commitment.amount * t.winner_pool, t.winning_total)
        assert exact - 1 < ln.payout <= exact
        assert ln.share == Fraction(ln.commitment.amount, t.winning_total)
        assert ln.profit == ln.payout - ln.commitment.amount
    winners = sum(1 for ln in d.lines if ln.result == "won")
    assert d.breakage < winners  # each floor loses less than one minor unit


@settings(max_examples=300)
@given(commitment_lists, st.sampled_from(OPTIONS), house_fees, creator_fees)
def test_fees_are_the_floor_of_the_pool_times_their_rate(cs, winner, house, creator):
    t = distribute(cs, Outcome.winner(winner), house, creator).terms
    if t.kind == "resolved":
        assert t.house_fee == t.pool * house // 10_000
        assert t.creator_fee == t.pool * creator // 10_000
        assert t.winner_pool == t.pool - t.house_fee - t.creator_fee


@settings(max_examples=300)
@given(commitment_lists, outcomes, house_fees, creator_fees, st.randoms(use_true_random=False),
       st.integers(min_value=1, max_value=7))
def test_batched_settlement_pays_exactly_what_the_whole_distribution_pays(cs, outcome, house,
                                                                          creator, rnd, batch):
    """Large markets stream their commitments in batches, in any order: same money."""
    whole = distribute(cs, outcome, house, creator)
    totals: dict[str, int] = {}
    for c in cs:
        totals[c.option_id] = totals.get(c.option_id, 0) + c.amount
    t = terms(totals, outcome, house, creator)
    shuffled = list(cs)
    rnd.shuffle(shuffled)
    paid, payouts = 0, {}
    for i in range(0, len(shuffled), batch):
        for c in shuffled[i:i + batch]:
            ln = line(t, c)
            paid += ln.payout
            payouts[c.commitment_id] = ln.payout
    assert t == whole.terms
    assert payouts == {ln.commitment.commitment_id: ln.payout for ln in whole.lines}
    assert breakage(t, paid) == whole.breakage


@settings(max_examples=200)
@given(commitment_lists, house_fees, creator_fees)
def test_void_refunds_every_commitment_in_full_without_fees(cs, house, creator):
    d = distribute(cs, Outcome.void(), house, creator)
    assert d.terms.kind == "void"
    assert (d.terms.house_fee, d.terms.creator_fee, d.breakage) == (0, 0, 0)
    assert all(ln.result == "refunded" and ln.payout == ln.commitment.amount and ln.profit == 0
               for ln in d.lines)


@settings(max_examples=200)
@given(commitment_lists, house_fees, creator_fees)
def test_nobody_on_the_winning_option_refunds_everyone_in_full(cs, house, creator):
    d = distribute(cs, Outcome.winner("nobody-picked-this"), house, creator)
    assert d.terms.kind == "refunded"
    assert (d.terms.house_fee, d.terms.creator_fee, d.breakage) == (0, 0, 0)
    assert [ln.payout for ln in d.lines] == [c.amount for c in cs]


# --- cases ----------------------------------------------------------------------------

def test_breakage_goes_to_house_worked_example():
    # pool 1000, house 5% = 50, creator 2% = 20, winner pool 930 shared by 3 equal winners.
    cs = [Commitment("c1", "u1", "a", 100), Commitment("c2", "u2", "a", 100),
          Commitment("c3", "u3", "a", 100), Commitment("c4", "u4", "b", 700)]
    d = distribute(cs, Outcome.winner("a"), 500, 200)
    assert (d.terms.pool, d.terms.house_fee, d.terms.creator_fee) == (1000, 50, 20)
    assert [ln.payout for ln in d.lines] == [310, 310, 310, 0]
    assert d.breakage == 0
    d = distribute(cs[:2] + [Commitment("c3", "u3", "a", 101)] + cs[3:], Outcome.winner("a"), 500, 200)
    # pool 1001: house 50, creator 20, winner pool 931 over 301: 309, 309, 312 -> 930, breakage 1
    assert [ln.payout for ln in d.lines] == [309, 309, 312, 0]
    assert d.breakage == 1
    assert d.paid + 50 + 20 + d.breakage == 1001


def test_a_market_with_one_commitment_pays_it_the_pool_less_fees():
    d = distribute([Commitment("c1", "u1", "a", 10_000)], Outcome.winner("a"), 500, 100)
    assert d.lines[0].payout == 10_000 - 500 - 100
    assert d.lines[0].profit == -600
    assert d.breakage == 0


def test_a_market_where_everyone_wins_pays_each_their_stake_less_fees():
    cs = [Commitment(f"c{i}", f"u{i}", "a", 1_000 * (i + 1)) for i in range(4)]  # pool 10,000
    d = distribute(cs, Outcome.winner("a"), 500, 500)
    assert [ln.payout for ln in d.lines] == [900, 1_800, 2_700, 3_600]
    assert all(ln.result == "won" for ln in d.lines)
    assert d.breakage == 0 and d.terms.house_fee == 500 and d.terms.creator_fee == 500


def test_several_commitments_per_user_on_different_options_are_paid_per_commitment():
    cs = [Commitment("c1", "ann", "red", 300), Commitment("c2", "ann", "blue", 200),
          Commitment("c3", "bob", "red", 100), Commitment("c4", "bob", "green", 400)]
    d = distribute(cs, Outcome.winner("red"), 500, 100)
    # pool 1000, fees 50 + 10, winner pool 940 over red 400: ann 705, bob 235.
    assert [ln.result for ln in d.lines] == ["won", "lost", "won", "lost"]
    assert d.payouts_by_user() == {"ann": 705, "bob": 235}
    assert sum(ln.profit for ln in d.lines if ln.commitment.user_id == "ann") == 705 - 500


def test_an_empty_market_distributes_nothing():
    d = distribute([], Outcome.winner("a"), 500, 100)
    assert (d.terms.pool, d.paid, d.breakage) == (0, 0, 0)


def test_breakage_refuses_payouts_above_the_winner_pool():
    t = terms({"a": 10, "b": 10}, Outcome.winner("a"), 500, 100)
    with pytest.raises(LedgerError):
        breakage(t, t.winner_pool + 1)


# --- commitments: option id, legacy position, or both -----------------------------------

def test_binary_position_yes_is_the_first_option_and_no_the_second():
    m = binary()
    assert m.commit("c1", "u", 5, position="yes").option_id == "will"
    assert m.commit("c2", "u", 5, position="no").option_id == "wont"


def test_mixed_position_and_option_commitments_record_how_the_option_was_named():
    m = binary()
    by_position = m.commit("c1", "u", 5, position="no")
    by_option = m.commit("c2", "u", 5, option_id="wont")
    both = m.commit("c3", "u", 5, option_id="wont", position="no")
    assert (by_position.method, by_option.method, both.method) == ("position", "option_id", "option_id")
    assert by_position.option_id == by_option.option_id == both.option_id == "wont"
    d = distribute([by_position, by_option, both], Outcome.winner("wont"), 500, 200)
    assert all(ln.result == "won" for ln in d.lines)


def test_option_and_position_that_contradict_each_other_are_refused():
    with pytest.raises(Refused, match="contradicts position 'yes'"):
        binary().commit("c1", "u", 5, option_id="wont", position="yes")


def test_an_unknown_option_is_refused():
    with pytest.raises(Refused, match="no option 'maybe'"):
        multi().commit("c1", "u", 5, option_id="maybe")


def test_a_position_on_a_multi_option_market_is_refused():
    with pytest.raises(Refused, match="multi-option"):
        multi().commit("c1", "u", 5, position="yes")


def test_a_commitment_naming_no_option_is_invalid():
    with pytest.raises(InvalidCommand):
        multi().commit("c1", "u", 5)


@pytest.mark.parametrize("status", ["settling", "settled", "voided", "closed"])
def test_a_market_that_is_not_open_takes_no_commitments(status):
    with pytest.raises(Refused, match=f"is {status}"):
        binary(status).commit("c1", "u", 5, position="yes")


# --- market definition ------------------------------------------------------------------

@pytest.mark.parametrize("bps", [0, 99, 501, 10_000])
def test_a_creator_fee_outside_100_to_500_bps_is_refused(bps):
    with pytest.raises(Refused, match="creator fee"):
        Market.open("m", "multi", ["a", "b"], "NGN", "c", bps)


@pytest.mark.parametrize("bps", [100, 500])
def test_creator_fee_bounds_are_allowed(bps):
    check_fees(bps, 500)


def test_fees_above_the_whole_pool_are_refused():
    with pytest.raises(Refused, match="exceeds"):
        Market.open("m", "multi", ["a", "b"], "NGN", "c", 500, house_fee_bps=9_600)


def test_a_binary_market_has_exactly_two_options():
    with pytest.raises(Refused, match="exactly 2"):
        Market.open("m", "binary", ["a", "b", "c"], "NGN", "c", 200)


def test_option_ids_are_unique():
    with pytest.raises(Refused, match="unique"):
        Market.open("m", "multi", ["a", "a"], "NGN", "c", 200)


def test_a_settled_market_is_not_resolvable_but_a_closed_one_is():
    with pytest.raises(Refused, match="roll it back"):
        binary(SETTLED).check_resolvable("will")
    binary(CLOSED).check_resolvable("will")
    with pytest.raises(Refused, match="no option"):
        binary(CLOSED).check_resolvable("perhaps")
