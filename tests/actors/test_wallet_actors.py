"""The wallets actors, called in-process on the run's database (validation, claim, ledger)."""

from __future__ import annotations

import pytest
from sqlalchemy import event, text

from domain.errors import InvalidCommand, Refused, RequestConflict
from tests.harness import uid


@pytest.fixture(scope="module")
def wallets():
    from actors import wallets as module  # registers the actors on the run's broker

    return module


def call(actor, **kwargs):
    """What a worker does with a message's kwargs (validate, claim, body, commit)."""
    return actor.fn(**kwargs)


def balances(engine, *codes: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT code, balance FROM account_balances WHERE code = ANY(:c)"),
                            {"c": list(codes)})
        found = {r.code: int(r.balance) for r in rows}
    return {c: found.get(c, 0) for c in codes}


def transactions_of(engine, code: str) -> list:
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT t.kind, t.memo, t.metadata, e.amount FROM ledger_entries e "
            "JOIN accounts a ON a.id = e.account_id JOIN ledger_transactions t ON t.id = e.transaction_id "
            "WHERE a.code = :c ORDER BY e.id"), {"c": code}).all()


def claimed(engine, actor: str, rid: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM processed_requests WHERE actor = :a AND "
                                 "request_id = :r"), {"a": actor, "r": rid}).scalar_one() == 1


def deposit_kwargs(user: str, amount: int = 10_000, currency: str = "NGN", rid: str | None = None):
    return dict(request_id=rid or uid("r"), user_id=user, currency=currency, amount=amount,
                reference="bank transfer")


def test_deposit_credits_the_wallet_from_the_outside_world(engine, wallets):
    user = uid()
    wallet = f"user:{user}:NGN"
    before = balances(engine, "world:NGN", wallet)
    call(wallets.deposit, **deposit_kwargs(user, 12_345))
    after = balances(engine, "world:NGN", wallet)
    assert after[wallet] - before[wallet] == 12_345
    assert after["world:NGN"] - before["world:NGN"] == -12_345
    assert [(t.kind, t.memo, t.amount) for t in transactions_of(engine, wallet)] == [
        ("deposit", "bank transfer", 12_345)]
    with engine.connect() as conn:
        event = conn.execute(text("SELECT body FROM outbox WHERE event_name = 'wallet.changed' "
                                  "AND recipient = :u"), {"u": user}).scalar_one()
    assert (event["data"]["balance_before"], event["data"]["balance_after"]) == (0, 12_345)


def test_a_resent_deposit_takes_effect_once_and_a_changed_one_is_refused(engine, wallets):
    user = uid()
    kwargs = deposit_kwargs(user, 500)
    call(wallets.deposit, **kwargs)
    call(wallets.deposit, **kwargs)
    with pytest.raises(RequestConflict):
        call(wallets.deposit, **{**kwargs, "amount": 501})
    assert balances(engine, f"user:{user}:NGN") == {f"user:{user}:NGN": 500}
    assert len(transactions_of(engine, f"user:{user}:NGN")) == 1


@pytest.mark.parametrize("bad", [
    {"amount": 0}, {"amount": -5}, {"amount": 1.5}, {"amount": "100"}, {"currency": "EUR"},
    {"user_id": "has:colon"}, {"user_id": ""}, {"request_id": "r" * 129}, {"surprise": True},
])
def test_an_invalid_deposit_changes_nothing(engine, wallets, bad):
    user = uid()
    kwargs = {**deposit_kwargs(user), **bad}
    with pytest.raises(InvalidCommand):
        call(wallets.deposit, **kwargs)
    assert not claimed(engine, "deposit", str(kwargs["request_id"]))
    assert transactions_of(engine, f"user:{user}:NGN") == []


def test_withdraw_moves_money_to_the_outside_world(engine, wallets):
    user = uid()
    wallet = f"user:{user}:USD"
    call(wallets.deposit, **deposit_kwargs(user, 900, "USD"))
    before = balances(engine, "world:USD")["world:USD"]
    call(wallets.withdraw, request_id=uid("r"), user_id=user, currency="USD", amount=400,
         reference="to bank")
    assert balances(engine, wallet)[wallet] == 500
    assert balances(engine, "world:USD")["world:USD"] - before == 400
    assert [t.kind for t in transactions_of(engine, wallet)] == ["deposit", "withdrawal"]


def test_a_refused_withdrawal_changes_nothing_and_can_succeed_later(engine, wallets):
    user = uid()
    wallet = f"user:{user}:USD"
    # Far beyond any tier's credit line (SPEC §4).
    kwargs = dict(request_id=uid("r"), user_id=user, currency="USD", amount=10**13, reference="out")
    with pytest.raises(Refused):
        call(wallets.withdraw, **kwargs)
    assert not claimed(engine, "withdraw", kwargs["request_id"])  # a replay may still succeed
    assert transactions_of(engine, wallet) == []
    small = {**kwargs, "amount": 100}
    call(wallets.deposit, **deposit_kwargs(user, 300, "USD"))
    call(wallets.withdraw, **small)
    assert balances(engine, wallet)[wallet] == 200


def test_adjust_balance_moves_money_between_the_adjustments_account_and_the_wallet(engine, wallets):
    user = uid()
    wallet = f"user:{user}:ISK"
    call(wallets.deposit, **deposit_kwargs(user, 1_000, "ISK"))
    before = balances(engine, "adjustments:ISK")["adjustments:ISK"]
    # An upward correction first: it must not depend on any platform account holding money.
    call(wallets.adjust_balance, request_id=uid("r"), user_id=user, currency="ISK", amount=200,
         reason="goodwill", performed_by="ops-ann")
    call(wallets.adjust_balance, request_id=uid("r"), user_id=user, currency="ISK", amount=-300,
         reason="duplicate credit", performed_by="ops-ann")
    assert balances(engine, wallet)[wallet] == 900
    assert balances(engine, "adjustments:ISK")["adjustments:ISK"] - before == 100
    adjustments = [t for t in transactions_of(engine, wallet) if t.kind == "adjustment"]
    assert [(t.memo, t.amount, t.metadata["performed_by"]) for t in adjustments] == [
        ("goodwill", 200, "ops-ann"), ("duplicate credit", -300, "ops-ann")]


def test_fund_treasury_moves_capital_from_the_world_into_the_treasury_once(engine, wallets):
    before = balances(engine, "world:TOKEN", "treasury:TOKEN")
    kwargs = dict(request_id=uid("r"), currency="TOKEN", amount=7_000, reference="seed capital",
                  performed_by="cfo")
    call(wallets.fund_treasury, **kwargs)
    call(wallets.fund_treasury, **kwargs)
    after = balances(engine, "world:TOKEN", "treasury:TOKEN")
    assert after["treasury:TOKEN"] - before["treasury:TOKEN"] == 7_000
    assert after["world:TOKEN"] - before["world:TOKEN"] == -7_000


def test_a_deposit_takes_three_statements_in_its_transaction(engine, wallets):
    """The claim, the locks with the guard's context (``wallet_lock_context``), and the
    posting with its audit line and event (``uow.wallets.post_and_record_many``): the hot path
    takes no more round trips for being behind the repositories.  (A deposit that opens a
    balance alert announces it in one more.)"""
    seen: list[str] = []
    committed: list[bool] = []

    def count(conn, cursor, statement, *args):
        if not committed:
            seen.append(statement)

    def commit(conn):
        committed.append(True)

    event.listen(engine, "before_cursor_execute", count)
    event.listen(engine, "commit", commit)
    try:
        # NGN 5,000.00: above the warning threshold, below the daily limit: no new alert.
        call(wallets.deposit, **deposit_kwargs(uid("u"), 500_000))
    finally:
        event.remove(engine, "before_cursor_execute", count)
        event.remove(engine, "commit", commit)
    assert len(seen) == 3, seen
    assert "processed_requests" in seen[0] and "wallet_lock_context" in seen[1]
    assert "ledger_post_many" in seen[2] and "wallet_audit" in seen[2]
