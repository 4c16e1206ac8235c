"""Conversion amounts, provider selection and the job's state machine, pure."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from domain import conversions as conv
from domain.errors import InvalidCommand, Refused
from domain.providers import ProviderView, is_healthy, rank, smallest_minimum, why_not


# --- amounts ---------------------------------------------------------------------------

def test_rate_is_parsed_exactly_into_ppm():
    assert conv.parse_rate("0.9990") == 999_000
    assert conv.parse_rate("1") == 1_000_000
    assert conv.format_rate(999_000) == "0.999000"
    for bad in ("0.1234567", "-1", "0", "abc", "nan"):
        with pytest.raises(InvalidCommand):
            conv.parse_rate(bad)


def test_quote_usdc_to_usd_at_rate_with_fee():
    # 1,000 USDC at 0.9990 = 999.00 USD; 25 bps fee = 2.4975 -> 2.50 (fee rounds up)
    q = conv.quote(1_000_000_000, "USDC->USD", 999_000, 25)
    assert q == conv.Quote(gross=99_900, fee=250, net=99_650)


def test_quote_usd_to_usdc():
    q = conv.quote(100_00, "USD->USDC", 1_001_000, 0)
    assert q == conv.Quote(100_100_000, 0, 100_100_000)


@given(amount=st.integers(1, 10**15), rate=st.integers(1, 3 * conv.PPM),
       fee=st.integers(0, 9_999), direction=st.sampled_from(sorted(conv.DIRECTIONS)))
def test_quote_is_integral_and_the_remainder_goes_to_the_provider(amount, rate, fee, direction):
    q = conv.quote(amount, direction, rate, fee)
    assert all(type(x) is int for x in (q.gross, q.fee, q.net))
    assert q.gross == q.net + q.fee and q.net >= 0 and q.fee >= 0
    src, dst = conv.DIRECTIONS[direction]
    from fractions import Fraction
    from domain.money import CURRENCIES
    exact = Fraction(amount * rate, conv.PPM) * Fraction(10 ** CURRENCIES[dst], 10 ** CURRENCIES[src])
    assert exact - 1 < q.gross <= exact  # gross never above the exact value
    assert q.fee * conv.BPS >= q.gross * fee  # fee never below the exact fee


# --- state machine ---------------------------------------------------------------------

def test_happy_path_transitions():
    s = conv.PENDING
    for nxt in (conv.SUBMITTED, conv.PROCESSING, conv.COMPLETED):
        s = conv.transition(s, nxt)
    assert s == conv.COMPLETED


@pytest.mark.parametrize("current", conv.TERMINAL)
def test_terminal_states_are_final(current):
    for new in (conv.PENDING, conv.SUBMITTED, conv.PROCESSING, conv.COMPLETED, conv.FAILED):
        with pytest.raises(Refused):
            conv.transition(current, new)


def test_a_job_with_its_provider_is_never_put_back_to_pending():
    for current in conv.WITH_PROVIDER:
        with pytest.raises(Refused):
            conv.transition(current, conv.PENDING)


@given(st.lists(st.sampled_from(conv.REPORT_STATES), max_size=30))
def test_reports_complete_a_job_at_most_once(reports):
    status, completions = conv.SUBMITTED, 0
    for r in reports:
        new = conv.after_report(status, r)
        if new is not None:
            assert new in conv.TRANSITIONS[status]
            completions += new == conv.COMPLETED
            status = new
    assert completions <= 1
    assert status in (conv.SUBMITTED, conv.PROCESSING, conv.COMPLETED, conv.FAILED)


def test_not_found_and_pending_jobs_do_not_move_on_reports():
    assert conv.after_report(conv.PROCESSING, conv.NOT_FOUND) is None
    assert conv.after_report(conv.PENDING, conv.COMPLETED) is None
    assert conv.after_report(conv.SUBMITTED, "processing") == conv.PROCESSING
    assert conv.after_report(conv.PROCESSING, "processing") is None


def test_three_retries_means_four_attempts_at_most():
    assert [conv.retries_left(n) for n in range(6)] == [True, True, True, True, False, False]


def test_stale_after_thirty_minutes():
    from datetime import datetime, timedelta, timezone
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert not conv.is_stale(t0, t0 + timedelta(minutes=29, seconds=59))
    assert conv.is_stale(t0, t0 + timedelta(minutes=30))


def test_failure_rate_above_five_percent():
    assert not conv.failure_rate_exceeded(0, 0)
    assert not conv.failure_rate_exceeded(95, 5)
    assert conv.failure_rate_exceeded(94, 5)


# --- providers -------------------------------------------------------------------------

def test_health_needs_ten_outcomes_and_eighty_percent():
    assert is_healthy(0, 9)
    assert not is_healthy(7, 3)  # 70 %
    assert is_healthy(8, 2)  # 80 % exactly is fine
    assert not is_healthy(79, 21)


def test_selection_lowest_priority_number_wins_among_eligible():
    ps = [ProviderView("b", 2), ProviderView("a", 1, status="paused"), ProviderView("c", 3),
          ProviderView("d", 0, directions=frozenset({"USD->USDC"})),
          ProviderView("e", 0, successes=1, failures=9), ProviderView("f", 0, min_amount=10_000),
          ProviderView("g", 0, max_amount=100), ProviderView("h", 0, daily_limit=10_000,
                                                              daily_volume_used=9_500)]
    assert [p.name for p in rank(ps, "USDC->USD", 1_000)] == ["b", "c"]
    assert [p.name for p in rank(ps, "USDC->USD", 1_000, exclude=["b"])] == ["c"]
    assert why_not(ps[7], "USDC->USD", 1_000) == "h has 500 of its daily volume left"
    assert why_not(ps[4], "USDC->USD", 1_000) == "e is degraded"


@given(st.lists(st.builds(
    ProviderView, name=st.text("abcdef", min_size=1, max_size=3), priority=st.integers(0, 5),
    status=st.sampled_from(["active", "paused"]),
    directions=st.sets(st.sampled_from(sorted(conv.DIRECTIONS))).map(frozenset),
    min_amount=st.integers(0, 1000), max_amount=st.one_of(st.none(), st.integers(1, 2000)),
    daily_limit=st.one_of(st.none(), st.integers(1, 5000)), daily_volume_used=st.integers(0, 5000),
    successes=st.integers(0, 30), failures=st.integers(0, 30)), max_size=8),
    st.integers(1, 2000), st.sampled_from(sorted(conv.DIRECTIONS)))
def test_selection_only_returns_eligible_providers_in_priority_order(ps, amount, direction):
    ranked = rank(ps, direction, amount)
    for p in ranked:
        assert p.status == "active" and direction in p.directions and p.healthy
        assert p.min_amount <= amount and (p.max_amount is None or amount <= p.max_amount)
        assert p.remaining_daily is None or amount <= p.remaining_daily
    assert [p.priority for p in ranked] == sorted(p.priority for p in ranked)
    eligible = [p for p in ps if why_not(p, direction, amount) is None]
    assert len(ranked) == len(eligible)


def test_smallest_minimum_ignores_paused_and_degraded():
    ps = [ProviderView("a", 1, min_amount=50), ProviderView("b", 1, min_amount=10, status="paused"),
          ProviderView("c", 1, min_amount=5, successes=0, failures=10)]
    assert smallest_minimum(ps, "USD->USDC") == 50
    assert smallest_minimum([], "USD->USDC") is None
