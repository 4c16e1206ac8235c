"""Wallets (SPEC §4): money in from outside, money out, operator adjustments, tiers,
treasury funding, and the one path every change to a user wallet takes.

    deposit         money arrives from outside into the user's wallet
    deposit_group   several deposits (distinct wallets) in one transaction: a group commit
    apply_each      several one-wallet changes, each its own ledger transaction, at once
    withdraw        money leaves the user's wallet for the outside; the guard may refuse it
    adjust_balance  an operator corrects a wallet against the ``adjustments`` account
    set_tier        a user moves to another tier: new limits from the next change on
    fund_treasury   capital from outside into the treasury that backs shadow personas
    apply_changes   guard, ledger, audit and events of any wallet change (challenges and
                    markets post through it too)
"""

from __future__ import annotations

from typing import Any, Sequence

from domain import accounts
from domain import guard as rules
from domain.errors import InvalidCommand
from domain.ledger import Posting
from domain.wallet import (BalanceRefused, WalletChange, changed_events, paired_with_balances,
                           postings_for)
from infra.contract.wallets import AdjustBalance, Deposit, FundTreasury, SetTier, Withdraw
from infra.uow import UnitOfWork
from infra.wallets.repository import CONTEXT_WALLETS, WalletPosting
from services import guard


def _deposit_change(cmd: Deposit) -> WalletChange:
    return WalletChange(cmd.user_id, cmd.currency, cmd.amount, "deposit",
                        reason=cmd.reference, performed_by=cmd.user_id)


def deposit(cmd: Deposit, uow: UnitOfWork) -> int:
    """Money arrives from outside the platform into the user's wallet."""
    change = _deposit_change(cmd)
    return apply_changes(uow, [change], counter_account=accounts.world(cmd.currency),
                         kind="deposit", memo=cmd.reference)


def deposit_group(uow: UnitOfWork, cmds: Sequence[Deposit]) -> list[int]:
    """Several deposits in one transaction (``infra.group_commit``), their wallets distinct,
    each checked and posted as ``deposit`` would alone (``apply_each``).  A refusal raises
    (the group rolls back and each deposit runs alone, where a refusal is told).  Returns
    the transaction ids in order."""
    return apply_each(uow, [(_deposit_change(c), accounts.world(c.currency), c.reference, None)
                            for c in cmds], kind="deposit")


def apply_each(uow: UnitOfWork,
               items: Sequence[tuple[WalletChange, str, str | None, dict[str, Any] | None]],
               *, kind: str) -> list[int]:
    """Several one-wallet changes of distinct wallets, each ``(change, counter_account,
    memo, metadata)`` its own ledger transaction, as ``apply_changes`` would post each one
    alone — set-wise: the wallets and counter accounts locked with the guard's context in
    one statement (in account id order, as every transaction locks), every change checked
    by the guard against its wallet's balance and windows, every transaction written with
    its audit line, event and alerts in one more.  A refusal raises before anything is
    written (and is not told: the caller runs the changes alone then).  Returns the
    transaction ids in order."""
    changes = [change for change, _, _, _ in items]
    if len({c.account for c in changes}) != len(changes) or len(changes) > CONTEXT_WALLETS:
        raise ValueError("changes posted together need distinct wallets, at most "
                         "CONTEXT_WALLETS")
    wanted = {counter: change.currency for change, counter, _, _ in items}
    wanted.update({c.account: c.currency for c in changes})
    balances, context = uow.wallets.lock(wanted, changes, with_context=True)
    posted = []
    for change, counter, memo, metadata in items:
        _, postings = postings_for([change], counter)
        paired = paired_with_balances([change], balances)
        guard.check(uow, paired, context=context)
        posted.append(WalletPosting(paired, postings, (), changed_events(paired, None), kind,
                                    memo, metadata))
    return guard.post_and_record_many(uow, posted, context)


def deposit_wallet(cmd: Deposit) -> tuple[str, str]:
    """What two deposits of one group may not share (``deposit_group``)."""
    return cmd.user_id, cmd.currency


def withdraw(cmd: Withdraw, uow: UnitOfWork) -> int:
    """Money leaves the user's wallet for the outside; the guard may refuse it."""
    change = WalletChange(cmd.user_id, cmd.currency, -cmd.amount, "withdrawal",
                          reason=cmd.reference, performed_by=cmd.user_id)
    return apply_changes(uow, [change], counter_account=accounts.world(cmd.currency),
                         kind="withdrawal", memo=cmd.reference)


def adjust_balance(cmd: AdjustBalance, uow: UnitOfWork) -> int:
    """An operator corrects a wallet; the counterpart is the ``adjustments`` account."""
    change = WalletChange(cmd.user_id, cmd.currency, cmd.amount, "adjustment",
                          reason=cmd.reason, performed_by=cmd.performed_by)
    return apply_changes(uow, [change], counter_account=accounts.adjustments(cmd.currency),
                         kind="adjustment", memo=cmd.reason,
                         metadata={"performed_by": cmd.performed_by})


def set_tier(cmd: SetTier, uow: UnitOfWork) -> str:
    """Move a user to another tier: their limits change from the next wallet change on.
    Emits ``wallet.tier_changed``; returns the previous tier."""
    if cmd.tier not in rules.TIERS:
        raise InvalidCommand(f"unknown tier {cmd.tier!r}")
    previous = uow.guard.tier(cmd.user_id, lock=True)
    uow.guard.store_tier(cmd.user_id, cmd.tier, previous, cmd.request_id)
    uow.emit("wallet.tier_changed",
             {"user_id": cmd.user_id, "tier": cmd.tier, "previous_tier": previous},
             recipient=cmd.user_id)
    return previous


def fund_treasury(cmd: FundTreasury, uow: UnitOfWork) -> int:
    """Capital from outside into the treasury that backs shadow personas."""
    return uow.ledger.post(
        [Posting(accounts.world(cmd.currency), cmd.currency, -cmd.amount),
         Posting(accounts.treasury(cmd.currency), cmd.currency, cmd.amount)],
        kind="treasury_funding", memo=cmd.reference,
        metadata={"performed_by": cmd.performed_by})


def apply_changes(uow: UnitOfWork, changes: Sequence[WalletChange], *, counter_account: str,
                  kind: str, memo: str | None = None, idempotency_key: str | None = None,
                  metadata: dict[str, Any] | None = None, notify: bool = True) -> int:
    """Post ``changes`` (one currency) against ``counter_account`` as one balanced ledger
    transaction; returns its id.

    The wallets and the counter account are locked first (in id order), the guard sees
    every change with its balance before, then the transaction is posted with the audit
    trail and the ``wallet.changed`` events.  A refusal raises before anything is written,
    and is told in a transaction of its own.  A few wallets take two statements (locks
    with the guard's context, then the posting with everything it writes).
    """
    currency, postings = postings_for(changes, counter_account)
    few = len(changes) <= CONTEXT_WALLETS
    wanted = {counter_account: currency, **{c.account: currency for c in changes}}
    balances, context = uow.wallets.lock(wanted, changes, with_context=few)
    paired = paired_with_balances(changes, balances)
    try:
        guard.check(uow, paired, context=context)
    except BalanceRefused as refusal:
        guard.tell_refusal(uow, refusal)
        raise
    if context is not None and idempotency_key is None:
        return guard.post_and_record(uow, paired, postings, context,
                                     changed_events(paired, None) if notify else [],
                                     kind=kind, memo=memo, metadata=metadata)
    txn_id = uow.ledger.post(postings, kind=kind, memo=memo, idempotency_key=idempotency_key,
                             metadata=metadata)
    uow.wallets.record(paired, txn_id, context=context,
                       events=changed_events(paired, txn_id) if notify else [])
    return txn_id
