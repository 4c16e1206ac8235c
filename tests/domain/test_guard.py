"""The balance guard's rules, pure (SPEC §4)."""

from __future__ import annotations

import statistics
from datetime import datetime, timedelta, timezone
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain import guard
from domain.errors import InvalidCommand
from domain.guard import Limits, Usage, default_limits
from domain.money import CURRENCIES, major_to_minor
from domain.wallet import BalanceRefused, WalletChange

NGN = default_limits("bronze", "NGN")


def change(amount, kind="withdrawal", cur="NGN"):
    return WalletChange("u1", cur, amount, kind)


def refusal(amount, before, limits=NGN, used=Usage(), kind=None):
    kind = kind or ("deposit" if amount > 0 else "withdrawal")
    with pytest.raises(BalanceRefused) as exc:
        guard.validate(change(amount, kind, limits.currency), before, limits, used)
    return exc.value


# --- the tier table ----------------------------------------------------------------------------

def test_tier_table_is_spec_table_in_minor_units_per_currency():
    assert default_limits("bronze", "NGN") == Limits(
        "bronze", "NGN", -1_000_000, 100_000_000, 5_000_000, 20_000_000, 100_000, 10_000)
    assert default_limits("diamond", "USDC").min_balance == -50_000 * 10**6
    assert default_limits("gold", "TOKEN").daily == 150_000
    assert default_limits("platinum", "USD").weekly == 1_000_000 * 100
    assert default_limits("silver", "ISK").max_balance == 1_000_000 * 100


@pytest.mark.parametrize("tier", guard.TIERS)
@pytest.mark.parametrize("cur", list(CURRENCIES))
def test_every_tier_converts_with_the_currency_exponent(tier, cur):
    lo, hi, daily, weekly = guard.TIER_TABLE[tier]
    lim = default_limits(tier, cur)
    assert (lim.min_balance, lim.max_balance, lim.daily, lim.weekly) == tuple(
        v * 10 ** CURRENCIES[cur] for v in (lo, hi, daily, weekly))
    assert lim.min_balance < 0 < lim.critical < lim.warning


def test_unknown_tier_is_refused():
    with pytest.raises(InvalidCommand):
        default_limits("mithril", "NGN")


# --- rules at their boundaries -----------------------------------------------------------------

def test_min_balance_exactly_at_minimum_passes_one_minor_unit_below_fails():
    guard.validate(change(-1_000_000), 0, NGN, Usage())  # lands exactly on -10,000.00
    err = refusal(-1_000_001, 0)
    assert (err.rule, err.exceeded_by, err.limit) == ("min_balance", 1, -1_000_000)
    assert "short by 1" in str(err)


def test_max_balance_exactly_at_maximum_passes_one_minor_unit_above_fails():
    guard.validate(change(1_000, "deposit"), NGN.max_balance - 1_000, NGN, Usage())
    err = refusal(1_001, NGN.max_balance - 1_000)
    assert (err.rule, err.exceeded_by) == ("max_balance", 1)


def test_daily_limit_counts_this_change_exactly_at_limit_passes():
    used = Usage(daily=NGN.daily - 500, weekly=NGN.daily - 500)
    guard.validate(change(500, "deposit"), 0, NGN, used)
    err = refusal(501, 0, used=used)
    assert (err.rule, err.exceeded_by, err.limit) == ("daily_limit", 1, NGN.daily)


def test_daily_limit_sums_magnitudes_so_deposits_and_withdrawals_both_count():
    used = Usage(daily=NGN.daily - 100, weekly=NGN.daily - 100)
    err = refusal(-101, 10_000_000, used=used)
    assert err.rule == "daily_limit" and err.exceeded_by == 1


def test_weekly_limit_exactly_at_limit_passes_one_over_fails():
    used = Usage(daily=0, weekly=NGN.weekly - 700)
    guard.validate(change(700, "deposit"), 0, NGN, used)
    err = refusal(701, 0, used=used)
    assert (err.rule, err.exceeded_by) == ("weekly_limit", 1)


def test_a_single_change_larger_than_the_daily_limit_is_refused_by_it():
    err = refusal(NGN.daily + 1, 0)
    assert err.rule == "daily_limit" and err.exceeded_by == 1


@pytest.mark.parametrize("kind", ["payout", "refund", "reversal", "transfer"])
def test_system_changes_are_never_refused(kind):
    used = Usage(daily=NGN.daily * 10, weekly=NGN.weekly * 10)
    guard.validate(change(-10**12, kind), 0, NGN, used)
    guard.validate(change(10**12, kind), NGN.max_balance, NGN, used)


def test_a_deposit_into_a_wallet_below_its_minimum_is_not_refused_by_the_minimum():
    guard.validate(change(100, "deposit"), NGN.min_balance - 50_000, NGN, Usage())


def test_a_withdrawal_from_a_wallet_above_its_maximum_is_not_refused_by_the_maximum():
    guard.validate(change(-100), NGN.max_balance + 50_000, NGN, Usage())


def test_refusal_data_names_rule_limit_and_amount():
    err = refusal(-1_000_500, 0)
    d = err.data()
    assert d["rule"] == "min_balance" and d["exceeded_by"] == 500 and d["amount"] == -1_000_500
    assert d["user_id"] == "u1" and d["currency"] == "NGN" and "short by 500" in d["reason"]


@given(before=st.integers(-10**9, 10**9), amount=st.integers(-10**8, 10**8).filter(bool),
       daily=st.integers(0, 10**8), weekly=st.integers(0, 10**8),
       kind=st.sampled_from(["deposit", "withdrawal", "wager", "adjustment"]))
def test_validate_refuses_exactly_when_some_rule_is_broken(before, amount, daily, weekly, kind):
    used = Usage(daily, max(daily, weekly))
    after = before + amount
    size = abs(amount)
    broken = {
        "min_balance": amount < 0 and after < NGN.min_balance,
        "max_balance": amount > 0 and after > NGN.max_balance,
        "daily_limit": used.daily + size > NGN.daily,
        "weekly_limit": used.weekly + size > NGN.weekly,
    }
    try:
        guard.validate(WalletChange("u", "NGN", amount, kind), before, NGN, used)
    except BalanceRefused as err:
        assert broken[err.rule]
        first = next(rule for rule, b in broken.items() if b)
        assert err.rule == first and err.exceeded_by > 0
    else:
        assert not any(broken.values())


# --- risk score --------------------------------------------------------------------------------

@pytest.mark.parametrize("before,amount,tier,expected", [
    (10_000, -5_000, "silver", 0),       # exactly 50%: not more than half
    (10_000, -5_001, "silver", 20),      # just over 50%
    (10_000, -8_000, "silver", 20),      # exactly 80%
    (10_000, -8_001, "silver", 50),      # just over 80%
    (10_000, -10_001, "silver", 75),     # and the balance goes negative
    (10_000, -10_001, "bronze", 85),
    (10_000, -10_001, "diamond", 65),
    (10_000, 100, "diamond", 0),         # clamped at 0
    (0, 100, "silver", 50),              # any change to an empty wallet is large
    (-1_000, -3_000, "bronze", 85),
    (-1_000, -3_000, "platinum", 75),
])
def test_risk_score_formula(before, amount, tier, expected):
    assert guard.risk_score(before, amount, tier) == expected


@given(st.integers(-10**12, 10**12), st.integers(-10**12, 10**12).filter(bool),
       st.sampled_from(guard.TIERS))
def test_risk_score_is_always_between_0_and_100(before, amount, tier):
    assert 0 <= guard.risk_score(before, amount, tier) <= 100


# --- balance alerts ----------------------------------------------------------------------------

def test_balance_levels_at_their_thresholds():
    assert guard.balance_level(NGN.warning, NGN) is None
    assert guard.balance_level(NGN.warning - 1, NGN) == "balance_warning"
    assert guard.balance_level(NGN.critical, NGN) == "balance_warning"
    assert guard.balance_level(NGN.critical - 1, NGN) == "balance_critical"
    assert guard.balance_level(-5, NGN) == "balance_critical"


def test_the_level_that_holds_is_raised_and_the_other_resolved():
    d = guard.balance_alerts(NGN.warning, NGN.warning - 1, NGN)
    assert d.raise_kinds == ("balance_warning",) and d.resolve_kinds == ("balance_critical",)
    d = guard.balance_alerts(0, NGN.warning, NGN)
    assert d.raise_kinds == () and set(d.resolve_kinds) == {"balance_warning", "balance_critical"}


def test_significant_drop_is_more_than_half_of_a_positive_balance():
    assert not guard.is_significant_drop(1_000, 500)
    assert guard.is_significant_drop(1_000, 499)
    assert guard.is_significant_drop(1, -1)
    assert not guard.is_significant_drop(0, -1_000_000)  # no previous balance: no division
    assert not guard.is_significant_drop(-10, -1_000_000)
    assert "significant_drop" in guard.balance_alerts(10**9, 10**8, NGN).raise_kinds


# --- analytics ---------------------------------------------------------------------------------

def test_volatility_is_population_std_dev_of_magnitudes():
    stats = guard.ChangeStats.of([("deposit", 2), ("withdrawal", -4), ("deposit", 4), ("x", -4),
                                  ("x", 5), ("x", 5), ("x", -7), ("x", 9)])
    assert guard.volatility(stats.count, stats.sum_abs, stats.sum_sq) == 2  # the textbook set


@given(st.lists(st.integers(-10**9, 10**9).filter(bool), min_size=1, max_size=60))
def test_volatility_matches_pstdev_floored(amounts):
    stats = guard.ChangeStats.of(("k", a) for a in amounts)
    got = guard.volatility(stats.count, stats.sum_abs, stats.sum_sq)
    variance = statistics.pvariance([Fraction(abs(a)) for a in amounts])  # exact
    assert got * got <= variance < (got + 1) * (got + 1)


def test_volatility_of_nothing_is_zero():
    assert guard.volatility(0, 0, 0) == 0


def test_analyze_hand_computed():
    stats = guard.ChangeStats.of([("deposit", 500_000), ("withdrawal", -200_000), ("payout", 100_000)])
    got = guard.analyze("NGN", 1_000_000, 1_400_000, stats)
    assert got["net_change"] == 400_000
    assert got["change_percent"] == 40.0 and got["change_bps"] == 4000
    assert got["totals_by_type"] == {"deposit": 500_000, "payout": 100_000, "withdrawal": -200_000}
    # |changes| 500k, 200k, 100k: mean 266,666.67; pstdev = 169,967.3...
    assert got["volatility"] == 169_967
    assert got["trend"] == "up"  # +4,000 NGN > +100 NGN
    assert got["risk_level"] == "medium"  # 40% > 25


def test_trend_boundaries_are_plus_minus_100_major_units():
    assert guard.trend(10_000, "NGN") == "flat"
    assert guard.trend(10_001, "NGN") == "up"
    assert guard.trend(-10_000, "NGN") == "flat"
    assert guard.trend(-10_001, "NGN") == "down"
    assert guard.trend(101, "TOKEN") == "up"


def test_risk_level_boundaries():
    m = major_to_minor
    assert guard.risk_level(m(10_000, "NGN"), None, "NGN") == "medium"
    assert guard.risk_level(m(10_000, "NGN") + 1, None, "NGN") == "high"
    assert guard.risk_level(m(5_000, "NGN"), None, "NGN") == "low"
    assert guard.risk_level(m(5_000, "NGN") + 1, None, "NGN") == "medium"
    assert guard.risk_level(0, Fraction(50), "NGN") == "medium"
    assert guard.risk_level(0, Fraction(-5001, 100), "NGN") == "high"
    assert guard.risk_level(0, Fraction(25), "NGN") == "low"
    assert guard.risk_level(0, Fraction(2501, 100), "NGN") == "medium"


def test_percent_change_from_zero_is_none_not_a_division_error():
    got = guard.analyze("NGN", 0, 5_000, guard.ChangeStats.of([("deposit", 5_000)]))
    assert got["change_percent"] is None and got["change_bps"] is None


def test_period_bounds():
    now = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)
    assert guard.period_bounds("daily", now) == (now - timedelta(days=1), now)
    assert guard.period_bounds("weekly", now)[0] == now - timedelta(days=7)
    assert guard.period_bounds("monthly", now)[0] == now - timedelta(days=30)
    assert guard.period_bounds("yearly", now)[0] == now - timedelta(days=365)
    s, e = now - timedelta(hours=5), now - timedelta(hours=1)
    assert guard.period_bounds("custom", now, s, e) == (s, e)
    with pytest.raises(InvalidCommand):
        guard.period_bounds("custom", now, s)
    with pytest.raises(InvalidCommand):
        guard.period_bounds("custom", now, e, s)
    with pytest.raises(InvalidCommand):
        guard.period_bounds("fortnightly", now)
