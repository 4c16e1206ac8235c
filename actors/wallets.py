"""Wallets actors (SPEC §4): adapters of the handlers in ``services/wallets.py``."""

from __future__ import annotations

from infra.contract.wallets import AdjustBalance, Deposit, FundTreasury, SetTier, Withdraw
from infra.group_commit import Grouping
from infra.messaging import command
from infra.uow import UnitOfWork
from services import wallets


@command(grouped=Grouping(wallets.deposit_group, key=wallets.deposit_wallet))
def deposit(cmd: Deposit, uow: UnitOfWork):
    return wallets.deposit(cmd, uow)


@command()
def withdraw(cmd: Withdraw, uow: UnitOfWork):
    return wallets.withdraw(cmd, uow)


@command()
def adjust_balance(cmd: AdjustBalance, uow: UnitOfWork):
    return wallets.adjust_balance(cmd, uow)


@command()
def set_tier(cmd: SetTier, uow: UnitOfWork):
    return wallets.set_tier(cmd, uow)


@command()
def fund_treasury(cmd: FundTreasury, uow: UnitOfWork):
    return wallets.fund_treasury(cmd, uow)
