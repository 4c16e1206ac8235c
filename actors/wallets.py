"""Wallets: money in from outside, money out, operator adjustments, treasury funding."""

from __future__ import annotations

from domain import accounts
from domain.ledger import Posting
from domain.wallet import WalletChange
from infra import guard, ledger, wallets
from infra.contract.wallets import AdjustBalance, Deposit, FundTreasury, SetTier, Withdraw
from infra.messaging import command
from infra.uow import UnitOfWork


@command()
def deposit(cmd: Deposit, uow: UnitOfWork) -> None:
    """Money arrives from outside the platform into the user's wallet."""
    change = WalletChange(cmd.user_id, cmd.currency, cmd.amount, "deposit",
                          reason=cmd.reference, performed_by=cmd.user_id)
    wallets.apply_changes(uow, [change], counter_account=accounts.world(cmd.currency),
                          kind="deposit", memo=cmd.reference)


@command()
def withdraw(cmd: Withdraw, uow: UnitOfWork) -> None:
    """Money leaves the user's wallet for the outside; the guard may refuse it."""
    change = WalletChange(cmd.user_id, cmd.currency, -cmd.amount, "withdrawal",
                          reason=cmd.reference, performed_by=cmd.user_id)
    wallets.apply_changes(uow, [change], counter_account=accounts.world(cmd.currency),
                          kind="withdrawal", memo=cmd.reference)


@command()
def adjust_balance(cmd: AdjustBalance, uow: UnitOfWork) -> None:
    """An operator corrects a wallet; the counterpart is the ``adjustments`` account."""
    change = WalletChange(cmd.user_id, cmd.currency, cmd.amount, "adjustment",
                          reason=cmd.reason, performed_by=cmd.performed_by)
    wallets.apply_changes(uow, [change], counter_account=accounts.adjustments(cmd.currency),
                          kind="adjustment", memo=cmd.reason,
                          metadata={"performed_by": cmd.performed_by})


@command()
def set_tier(cmd: SetTier, uow: UnitOfWork) -> None:
    """Move a user to another tier: their limits change from the next wallet change on."""
    guard.set_tier(uow, cmd.user_id, cmd.tier, request_id=cmd.request_id)


@command()
def fund_treasury(cmd: FundTreasury, uow: UnitOfWork) -> None:
    """Capital from outside into the treasury that backs shadow personas."""
    ledger.post(
        uow.conn,
        [Posting(accounts.world(cmd.currency), cmd.currency, -cmd.amount),
         Posting(accounts.treasury(cmd.currency), cmd.currency, cmd.amount)],
        kind="treasury_funding",
        memo=cmd.reference,
        metadata={"performed_by": cmd.performed_by},
    )
