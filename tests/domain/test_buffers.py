"""Buffer status and replenishment sizing (SPEC §3), pure."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from domain import buffers as b
from domain.conversions import at_par
from domain.errors import InvalidCommand
from domain.money import major_to_minor

USDC = b.DEFAULT_THRESHOLDS["system_buffer_usdc"]
FIAT = b.DEFAULT_THRESHOLDS["system_buffer_fiat"]
BROKER = b.DEFAULT_THRESHOLDS["broker_operational"]


def usd(major):
    return major_to_minor(major, "USD")


def usdc(major):
    return major_to_minor(major, "USDC")


def test_defaults_are_the_spec_table_in_minor_units():
    assert USDC == b.Thresholds(usdc(10_000), usdc(50_000), usdc(100_000), usdc(20_000))
    assert FIAT == b.Thresholds(usd(20_000), usd(100_000), usd(200_000), usd(50_000))
    assert BROKER == b.Thresholds(usd(50_000), usd(200_000), usd(500_000), usd(100_000))
    assert USDC.min == 10_000 * 10**6 and FIAT.min == 20_000 * 100


@pytest.mark.parametrize("balance,expected", [
    (usd(19_999), b.CRITICAL_LOW), (usd(20_000), b.BELOW_TARGET), (usd(99_999), b.BELOW_TARGET),
    (usd(100_000), b.HEALTHY), (usd(200_000), b.HEALTHY), (usd(200_000) + 1, b.OVER_CAPITALIZED),
])
def test_status_boundaries(balance, expected):
    assert b.status(balance, FIAT) == expected


def test_thresholds_must_be_ordered_and_batch_positive():
    with pytest.raises(InvalidCommand):
        b.Thresholds(10, 10, 20, 1)
    with pytest.raises(InvalidCommand):
        b.Thresholds(1, 2, 3, 0)


def test_usdc_buffer_refills_to_target_in_whole_batches_from_fiat():
    plan = b.plan_replenishment("system_buffer_usdc", usdc(5_000), USDC, usd(150_000), FIAT, 0)
    # deficit 45,000 -> three batches of 20,000 USDC, paid 60,000 USD at par
    assert plan == b.Replenishment("system_buffer_usdc", "system_buffer_fiat", "USD->USDC",
                                   usd(60_000), usdc(60_000), capped=False)


def test_source_is_capped_at_its_own_min():
    plan = b.plan_replenishment("system_buffer_fiat", usd(10_000), FIAT, usdc(60_000), USDC, 0)
    # wanted: 2 batches = 100,000 USD, but the usdc buffer may only give 50,000 above its min
    assert plan.source_amount == usdc(50_000)
    assert plan.expected_amount == usd(50_000)
    assert plan.capped


def test_source_at_its_min_cannot_replenish():
    plan = b.plan_replenishment("broker_operational", 0, BROKER, USDC.min, USDC, 0)
    assert isinstance(plan, b.CannotReplenish)
    assert "its own min" in plan.reason


def test_below_provider_minimum_no_job():
    plan = b.plan_replenishment("system_buffer_fiat", usd(10_000), FIAT, USDC.min + usdc(100),
                                USDC, provider_minimum=usd(1_000))
    assert isinstance(plan, b.CannotReplenish)
    assert "provider minimum" in plan.reason


def test_no_provider_for_the_direction_no_job():
    plan = b.plan_replenishment("system_buffer_fiat", usd(10_000), FIAT, usdc(90_000), USDC, None)
    assert isinstance(plan, b.CannotReplenish) and "no active provider" in plan.reason


def test_not_below_min_means_nothing_to_do():
    assert b.plan_replenishment("system_buffer_fiat", FIAT.min, FIAT, usdc(90_000), USDC, 0) is None


def test_sub_cent_usdc_rounds_up_when_paying_and_down_when_receiving():
    assert at_par(1, "USDC", "USD", round_up=True) == 1
    assert at_par(1, "USDC", "USD", round_up=False) == 0
    assert at_par(12_345, "USD", "USDC", round_up=False) == 123_450_000


def test_a_cent_that_would_overshoot_max_is_not_paid():
    # One USD cent buys 10,000 micro-USDC: with 3 micro-USDC of room below max no job fits.
    tiny = b.Thresholds(min=1, target=2, max=3, batch=1)
    plan = b.plan_replenishment("system_buffer_usdc", 0, tiny, 1, b.Thresholds(0, 1, 2, 1), 0)
    assert isinstance(plan, b.CannotReplenish) and "less than one minor unit" in plan.reason


thresholds = st.tuples(st.integers(0, 10**12), st.integers(1, 10**12), st.integers(1, 10**12),
                       st.integers(1, 10**12)).map(
    lambda t: b.Thresholds(t[0], t[0] + t[1], t[0] + t[1] + t[2], t[3]))


@given(dest=st.sampled_from(sorted(b.CURRENCY_OF)), t=thresholds, src_t=thresholds,
       balance_frac=st.integers(0, 10**6), source_balance=st.integers(0, 10**13),
       provider_min=st.one_of(st.none(), st.integers(0, 10**9)))
def test_replenishment_invariants(dest, t, src_t, balance_frac, source_balance, provider_min):
    balance = t.min * balance_frac // 10**6  # anywhere in [0, min]
    plan = b.plan_replenishment(dest, balance, t, source_balance, src_t, provider_min)
    if balance >= t.min:
        assert plan is None
        return
    if isinstance(plan, b.CannotReplenish):
        return
    assert plan.source == b.SOURCE_OF[dest]
    assert plan.source_amount > 0
    # the source stays at or above its own min
    assert source_balance - plan.source_amount >= src_t.min
    # never past max, and when not capped: at least the target, in whole batches (or up to max)
    assert balance + plan.expected_amount <= t.max
    if not plan.capped:
        reached = balance + plan.expected_amount
        assert reached >= t.target or reached == t.max or plan.expected_amount % t.batch == 0
    # the provider minimum is honoured (at par, USD cents)
    from domain.conversions import par_value
    assert provider_min is not None and par_value(plan.source_amount,
                                                  b.CURRENCY_OF[plan.source]) >= provider_min


# --- a cycle planned as a whole: buffers sharing a source (SPEC §3) ---------------------

def levels(usdc_buffer: int, fiat: int, broker: int) -> dict[str, b.BufferLevel]:
    return {"system_buffer_usdc": b.BufferLevel("system_buffer_usdc", usdc_buffer, USDC),
            "system_buffer_fiat": b.BufferLevel("system_buffer_fiat", fiat, FIAT),
            "broker_operational": b.BufferLevel("broker_operational", broker, BROKER)}


ANY_PROVIDER = {"USD->USDC": 0, "USDC->USD": 0}


def test_two_buffers_on_one_source_share_what_it_can_spare_most_critical_first():
    # usdc can spare 50,000 above its min; broker (10k of a 50k min) is more critical
    # than fiat (10k of a 20k min), so broker is served first and fiat gets what is left.
    plans = b.plan_cycle(levels(usdc(60_000), usd(10_000), usd(10_000)), {}, set(), ANY_PROVIDER)
    assert [p.destination for p in plans] == ["broker_operational", "system_buffer_fiat"]
    broker, fiat = plans
    assert broker.source_amount == usdc(50_000) and broker.capped
    assert broker.wanted_amount == usdc(200_000)
    assert isinstance(fiat, b.CannotReplenish) and "can spare nothing" in fiat.reason


def test_jobs_not_yet_in_transit_are_subtracted_from_what_a_source_can_spare():
    # 150,000 above min, 120,000 of it already held by a pending job: 30,000 left
    plans = b.plan_cycle(levels(usdc(160_000), usd(150_000), usd(10_000)),
                         {"system_buffer_usdc": usdc(120_000)}, set(), ANY_PROVIDER)
    assert [(p.destination, p.source_amount) for p in plans] == \
        [("broker_operational", usdc(30_000))]


def test_a_capped_plan_is_rounded_down_to_whole_batches_when_one_fits():
    # broker wants 2 batches of 100,000; 150,000 spare buys one whole batch
    (plan,) = b.plan_cycle(levels(usdc(160_000), usd(150_000), usd(10_000)), {}, set(),
                           ANY_PROVIDER)
    assert plan.source_amount == usdc(100_000) and plan.capped


def test_a_buffer_with_a_job_in_flight_is_not_planned_and_leaves_the_spare_to_others():
    plans = b.plan_cycle(levels(usdc(60_000), usd(10_000), usd(10_000)), {},
                         {"broker_operational"}, ANY_PROVIDER)
    assert [(p.destination, p.source_amount) for p in plans] == \
        [("system_buffer_fiat", usdc(50_000))]


def test_criticality_ties_break_by_account_type():
    same = b.Thresholds(100, 200, 300, 50)
    lv = {"system_buffer_fiat": b.BufferLevel("system_buffer_fiat", 50, same),
          "broker_operational": b.BufferLevel("broker_operational", 50, same)}
    assert sorted(lv.values(), key=b.criticality)[0].account_type == "broker_operational"


def test_may_take_keeps_the_source_at_its_min_after_older_pending_jobs():
    assert b.may_take("system_buffer_usdc", usdc(40_000), usdc(60_000), USDC,
                      reserved=usdc(10_000)) is None
    reason = b.may_take("system_buffer_usdc", usdc(40_001), usdc(60_000), USDC,
                        reserved=usdc(10_000))
    assert reason and "can spare" in reason


@st.composite
def treasury_states(draw):
    """Random thresholds and balances for the three buffers, and pending jobs that were
    valid when created (each within what its source could spare)."""
    lv, pending = {}, []
    for account_type in sorted(b.CURRENCY_OF):
        t = draw(thresholds)
        lv[account_type] = b.BufferLevel(account_type, draw(st.integers(0, t.max + t.min)), t)
    for account_type in sorted(b.CURRENCY_OF):
        room = b.spare(lv[account_type].balance, lv[account_type].thresholds)
        for amount in draw(st.lists(st.integers(1, 10**12), max_size=3)):
            if amount <= room:
                pending.append((account_type, amount))
                room -= amount
    in_flight = draw(st.sets(st.sampled_from(sorted(b.CURRENCY_OF))))
    minimums = {d: draw(st.one_of(st.none(), st.integers(0, 10**6)))
                for d in ("USD->USDC", "USDC->USD")}
    return lv, pending, in_flight, minimums


def _reserved(jobs: list[tuple[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for source, amount in jobs:
        out[source] = out.get(source, 0) + amount
    return out


@given(state=treasury_states())
def test_the_sum_planned_from_a_source_never_exceeds_what_it_can_spare(state):
    lv, pending, in_flight, minimums = state
    reserved = _reserved(pending)
    plans = b.plan_cycle(lv, reserved, in_flight, minimums)
    planned = _reserved([(p.source, p.source_amount) for p in plans
                         if isinstance(p, b.Replenishment)])
    for source, total in planned.items():
        s = lv[source]
        assert total <= b.spare(s.balance, s.thresholds, reserved.get(source, 0))
    for p in plans:
        assert p.destination not in in_flight
        assert lv[p.destination].balance < lv[p.destination].thresholds.min
    order = [lv[p.destination] for p in plans]
    assert order == sorted(order, key=b.criticality)


@given(state=treasury_states(), data=st.data())
def test_no_job_planned_by_a_cycle_fails_for_want_of_funds_whatever_the_submission_order(
        state, data):
    lv, pending, in_flight, minimums = state
    plans = b.plan_cycle(lv, _reserved(pending), in_flight, minimums)
    jobs = pending + [(p.source, p.source_amount) for p in plans if isinstance(p, b.Replenishment)]
    balance = {t: lv[t].balance for t in lv}
    waiting = set(range(len(jobs)))  # job index = creation order (its id)
    for j in data.draw(st.permutations(range(len(jobs)))):
        source, amount = jobs[j]
        older = sum(a for i, (s, a) in enumerate(jobs) if i < j and i in waiting and s == source)
        assert b.may_take(source, amount, balance[source], lv[source].thresholds, older) is None
        balance[source] -= amount
        waiting.discard(j)
        assert balance[source] >= lv[source].thresholds.min
