"""Payment matching actors (SPEC §4): adapters of the handlers in ``services/journal.py``."""

from __future__ import annotations

from infra.contract.journal import (
    CloseCycle,
    CreateParticipation,
    ImportWalletJournal,
    LinkPayment,
    MatchPayments,
    OpenCycle,
    PlanCycle,
    RegisterCharacter,
)
from infra.messaging import command
from infra.uow import UnitOfWork
from services import journal


@command()
def register_character(cmd: RegisterCharacter, uow: UnitOfWork):
    return journal.register_character(cmd, uow)


@command()
def plan_cycle(cmd: PlanCycle, uow: UnitOfWork):
    return journal.plan_cycle(cmd, uow)


@command()
def create_participation(cmd: CreateParticipation, uow: UnitOfWork):
    return journal.create_participation(cmd, uow)


@command()
def import_wallet_journal(cmd: ImportWalletJournal, uow: UnitOfWork):
    return journal.import_wallet_journal(cmd, uow)


@command()
def link_payment(cmd: LinkPayment, uow: UnitOfWork):
    return journal.link_payment(cmd, uow)


@command()
def open_cycle(cmd: OpenCycle, uow: UnitOfWork):
    return journal.open_cycle(cmd, uow)


@command()
def close_cycle(cmd: CloseCycle, uow: UnitOfWork):
    return journal.close_cycle(cmd, uow)


@command(max_retries=20, retry_within_ms=290_000)  # fired every 5 min
def match_payments(cmd: MatchPayments, uow: UnitOfWork, progress=None):
    return journal.match_payments(cmd, uow, progress)
