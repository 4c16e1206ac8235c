"""The wallets handlers and the balance guard on the fake unit of work: no database, no
broker (SPEC §4)."""

from __future__ import annotations

import inspect
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import InvalidCommand
from domain.guard import DAILY_WINDOW, WEEKLY_WINDOW, default_limits
from domain.wallet import BalanceRefused, WalletChange
from infra.contract import parse
from infra.contract.operations import EvaluateBalanceAlerts
from infra.contract.wallets import AdjustBalance, Deposit, FundTreasury, SetTier, Withdraw
from infra.uow_fake import FakeGuard, FakeUnitOfWork, FakeWallets
from infra.wallets.repository import GuardRepository, WalletRepository
from services import guard, wallets

NGN = default_limits("bronze", "NGN")


def _deposit(user: str, amount: int, cur: str = "NGN", rid: str = "d") -> Deposit:
    return parse(Deposit, {"request_id": rid, "user_id": user, "currency": cur,
                           "amount": amount, "reference": "bank transfer"})


def _withdraw(user: str, amount: int, cur: str = "NGN", rid: str = "w") -> Withdraw:
    return parse(Withdraw, {"request_id": rid, "user_id": user, "currency": cur,
                            "amount": amount, "reference": "payout to bank"})


def run(uow: FakeUnitOfWork, handler, cmd):
    with uow:
        result = handler(cmd, uow)
        uow.commit()
    return result


def test_a_deposit_credits_the_wallet_against_the_world_audits_and_tells_it():
    uow = FakeUnitOfWork()
    txn = run(uow, wallets.deposit, _deposit("u1", 12_345))
    assert uow.ledger.balance == {"user:u1:NGN": 12_345, "world:NGN": -12_345}
    (line,) = uow.wallet_state.audit
    assert (line["kind"], line["amount"], line["balance_before"], line["transaction_id"]) == (
        "deposit", 12_345, 0, txn)
    assert line["user_initiated"] and line["performed_by"] == "u1"
    (event,) = [e for e in uow.events if e[0] == "wallet.changed"]
    assert event[1]["balance_after"] == 12_345 and event[1]["transaction_id"] == txn
    assert event[2] == "u1"


def test_a_withdrawal_takes_money_out_to_the_world():
    uow = FakeUnitOfWork()
    run(uow, wallets.deposit, _deposit("u1", 900, "USD"))
    run(uow, wallets.withdraw, _withdraw("u1", 400, "USD"))
    assert uow.ledger.balance["user:u1:USD"] == 500
    assert [line["kind"] for line in uow.wallet_state.audit] == ["deposit", "withdrawal"]


@settings(max_examples=60, deadline=None)
@given(before=st.integers(min_value=0, max_value=NGN.daily), extra=st.integers(0, 2))
def test_a_withdrawal_is_refused_by_the_daily_limit_exactly_past_it(before, extra):
    """What the trailing day holds plus the withdrawal may reach the daily limit, not
    pass it: refused by one unit, nothing is written, the refusal is still told."""
    uow = FakeUnitOfWork()
    uow.ledger.balance["user:u1:NGN"] = 10 * NGN.daily  # a system credit: no audit line
    if before:
        run(uow, wallets.deposit, _deposit("u1", before))
    amount = NGN.daily - before + extra
    if amount == 0:
        return
    balance = uow.ledger.balance["user:u1:NGN"]
    if extra == 0:
        run(uow, wallets.withdraw, _withdraw("u1", amount))
        assert uow.ledger.balance["user:u1:NGN"] == balance - amount
        return
    with pytest.raises(BalanceRefused) as refused:
        run(uow, wallets.withdraw, _withdraw("u1", amount))
    assert (refused.value.rule, refused.value.exceeded_by) == ("daily_limit", extra)
    assert uow.ledger.balance["user:u1:NGN"] == balance
    assert [line["kind"] for line in uow.wallet_state.audit] == ["deposit"] * bool(before)
    assert [e[0] for e in uow.events][-1] == "balance.change_rejected"
    assert "limit_exceeded:u1:NGN" in uow.alerts.open  # told on its own: kept


@settings(max_examples=40, deadline=None)
@given(age=st.sampled_from([DAILY_WINDOW, WEEKLY_WINDOW]),
       offset=st.sampled_from([-timedelta(microseconds=1), timedelta(0)]))
def test_a_change_leaves_its_window_exactly_one_window_old(age, offset):
    uow = FakeUnitOfWork()
    run(uow, wallets.deposit, _deposit("u1", 1_000))
    uow.wallet_state.now += age + offset
    with uow:
        used = uow.guard.usage([("u1", "NGN")]).get(("u1", "NGN"))
    inside = offset < timedelta(0)
    if age == DAILY_WINDOW:
        assert (used.daily, used.weekly) == ((1_000 if inside else 0), 1_000)
    else:
        assert used is None if not inside else (used.daily, used.weekly) == (0, 1_000)


def test_the_guard_counts_the_earlier_changes_of_the_same_batch():
    uow = FakeUnitOfWork()
    half = NGN.daily // 2
    changes = [WalletChange("u1", "NGN", half, "deposit"), WalletChange("u1", "NGN", half, "deposit"),
               WalletChange("u1", "NGN", NGN.daily - 2 * half + 1, "deposit")]
    with pytest.raises(BalanceRefused) as refused, uow:
        wallets.apply_changes(uow, changes, counter_account="world:NGN", kind="deposit")
    assert refused.value.rule == "daily_limit" and refused.value.exceeded_by == 1
    assert uow.ledger.balance == {}


def test_system_changes_pass_beyond_every_limit():
    uow = FakeUnitOfWork()
    with uow:
        wallets.apply_changes(uow, [WalletChange("u1", "NGN", -5 * NGN.daily, "reversal")],
                              counter_account="world:NGN", kind="reversal")
        guard.check(uow, [(WalletChange("u1", "NGN", 10 * NGN.daily, "payout"), 0)])
        uow.commit()
    assert uow.ledger.balance["user:u1:NGN"] == -5 * NGN.daily


def test_an_adjustment_goes_against_the_adjustments_account_and_names_the_operator():
    uow = FakeUnitOfWork()
    run(uow, wallets.deposit, _deposit("u1", 1_000, "ISK"))
    run(uow, wallets.adjust_balance, parse(AdjustBalance, {
        "request_id": "a", "user_id": "u1", "currency": "ISK", "amount": -300,
        "reason": "duplicate credit", "performed_by": "ops"}))
    assert uow.ledger.balance["user:u1:ISK"] == 700
    assert uow.ledger.balance["adjustments:ISK"] == 300
    txn = uow.ledger.transactions[-1]
    assert (txn["kind"], txn["memo"], txn["metadata"]) == (
        "adjustment", "duplicate credit", {"performed_by": "ops"})
    assert uow.wallet_state.audit[-1]["performed_by"] == "ops"


def test_a_tier_change_raises_the_limits_from_the_next_change_on():
    uow = FakeUnitOfWork()
    run(uow, wallets.deposit, _deposit("u1", NGN.daily))
    with pytest.raises(BalanceRefused):
        run(uow, wallets.deposit, _deposit("u1", 1, rid="d2"))
    previous = run(uow, wallets.set_tier, parse(SetTier, {
        "request_id": "t", "user_id": "u1", "tier": "silver"}))
    assert previous == "bronze" and uow.wallet_state.tiers == {"u1": "silver"}
    assert uow.wallet_state.tier_changes == [
        {"user_id": "u1", "previous_tier": "bronze", "tier": "silver", "request_id": "t"}]
    assert ("wallet.tier_changed", {"user_id": "u1", "tier": "silver",
                                    "previous_tier": "bronze"}, "u1") in uow.events
    run(uow, wallets.deposit, _deposit("u1", 1, rid="d3"))
    assert uow.ledger.balance["user:u1:NGN"] == NGN.daily + 1


def test_an_unknown_tier_is_refused():
    uow = FakeUnitOfWork()
    cmd = SetTier.model_construct(request_id="t", user_id="u1", tier="lead")
    with pytest.raises(InvalidCommand), uow:
        wallets.set_tier(cmd, uow)
    assert uow.wallet_state.tiers == {}


def test_funding_the_treasury_moves_capital_from_the_world():
    uow = FakeUnitOfWork()
    run(uow, wallets.fund_treasury, parse(FundTreasury, {
        "request_id": "f", "currency": "USD", "amount": 5_000_000, "reference": "seed",
        "performed_by": "ops"}))
    assert uow.ledger.balance == {"world:USD": -5_000_000, "treasury:USD": 5_000_000}
    assert uow.ledger.transactions[-1]["kind"] == "treasury_funding"
    assert uow.wallet_state.audit == []  # not a user wallet


def test_a_low_balance_raises_its_alert_and_a_recovery_resolves_it():
    uow = FakeUnitOfWork()
    run(uow, wallets.deposit, _deposit("u1", 50, "USD"))  # below the critical threshold
    alert = uow.alerts.open["balance_critical:u1:USD"]
    assert alert["data"]["transaction_id"] == uow.wallet_state.audit[-1]["transaction_id"]
    run(uow, wallets.deposit, _deposit("u1", 500_000, "USD", rid="d2"))
    assert "balance_critical:u1:USD" not in uow.alerts.open


def test_a_big_transactions_alerts_are_evaluated_in_chunks():
    users = [f"u{i:03d}" for i in range(150)]
    uow = FakeUnitOfWork()
    with uow:
        txn = wallets.apply_changes(uow, [WalletChange(u, "USD", 50_000, "payout") for u in users],
                                    counter_account="world:USD", kind="payout")
        uow.commit()
    assert uow.alerts.open == {}
    assert [s[0] for s in uow.sent] == ["evaluate_balance_alerts"]
    with uow:
        guard.evaluate_balance_alerts(parse(EvaluateBalanceAlerts, {
            "request_id": "e", "transaction_id": txn}), uow)
        uow.commit()
    assert len([k for k in uow.alerts.open if k.startswith("balance_warning:")]) == 150


@pytest.mark.parametrize("real, fake", [(WalletRepository, FakeWallets),
                                        (GuardRepository, FakeGuard)])
def test_the_fake_wallets_and_guard_have_the_real_ones_interface(real, fake):
    for name, method in inspect.getmembers(real, inspect.isfunction):
        if name.startswith("_"):
            continue
        twin = getattr(fake, name, None)
        assert twin is not None, f"{fake.__name__} lacks {name}"
        assert list(inspect.signature(twin).parameters) == \
            list(inspect.signature(method).parameters), name


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["u1", "u2", "u3", "u4", "u5"]),
                          st.sampled_from(["NGN", "USD"]), st.integers(1, 3_000_000)),
                min_size=1, max_size=8, unique_by=lambda d: (d[0], d[1])),
       st.integers(1, 4_000_000))
def test_a_deposit_group_does_what_its_deposits_do_alone(deposits, earlier):
    """``deposit_group`` (a group commit) against the same deposits one by one: the same
    balances, audit lines, events and alerts, in order — or the same refusal."""
    cmds = [_deposit(u, a, c, rid=f"d{n}") for n, (u, c, a) in enumerate(deposits)]
    grouped, alone = FakeUnitOfWork(), FakeUnitOfWork()
    for uow in (grouped, alone):  # some history under the daily limit
        run(uow, wallets.deposit, _deposit("u1", earlier, rid="before"))
    try:
        with alone:
            ids_alone = [wallets.deposit(cmd, alone) for cmd in cmds]
            alone.commit()
    except BalanceRefused as refused:
        with pytest.raises(BalanceRefused) as got, grouped:
            wallets.deposit_group(grouped, cmds)
        assert str(got.value) == str(refused)
        return
    with grouped:
        ids = wallets.deposit_group(grouped, cmds)
        grouped.commit()
    assert len(ids) == len(cmds) == len(set(ids))
    assert grouped.ledger.balance == alone.ledger.balance
    strip = lambda rows: [{k: v for k, v in r.items() if k != "transaction_id"} for r in rows]  # noqa: E731
    assert strip(grouped.wallet_state.audit) == strip(alone.wallet_state.audit)
    assert [(e[0], e[2], e[1]["balance_after"]) for e in grouped.events] == [
        (e[0], e[2], e[1]["balance_after"]) for e in alone.events]
    assert sorted(grouped.alerts.open) == sorted(alone.alerts.open)


def test_a_deposit_group_refuses_two_deposits_of_one_wallet():
    uow = FakeUnitOfWork()
    with pytest.raises(ValueError, match="distinct wallets"), uow:
        wallets.deposit_group(uow, [_deposit("u1", 5, rid="a"), _deposit("u1", 6, rid="b")])
