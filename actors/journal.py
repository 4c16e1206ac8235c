"""Payment matching: characters, cycles, participations, the wallet journal, and the
``match_payments`` step that links payments to the participations expecting them."""

from __future__ import annotations

import hashlib

from domain.errors import Refused
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
from infra.journal import matching
from infra.journal import repository as repo
from infra.logs import get_logger
from infra.messaging import command
from infra.uow import UnitOfWork

log = get_logger(__name__)


@command()
def register_character(cmd: RegisterCharacter, uow: UnitOfWork) -> None:
    """A character is registered with its role; only LOGISTICS characters receive payments."""
    outcome = repo.register_character(uow.conn, cmd.character_id, cmd.name, cmd.role)
    log.info("character.registered", character_id=cmd.character_id, role=cmd.role, outcome=outcome)


@command()
def plan_cycle(cmd: PlanCycle, uow: UnitOfWork) -> None:
    """A cycle is planned; it takes participations until it opens."""
    if not repo.plan_cycle(uow.conn, cmd.cycle_id):
        log.info("cycle.exists", cycle_id=cmd.cycle_id)


@command()
def create_participation(cmd: CreateParticipation, uow: UnitOfWork) -> None:
    """A user pledges an amount under a character name; the memo to send is
    ``ARB {cycle_id} {character_name}``."""
    cycle = repo.cycle(uow.conn, cmd.cycle_id, for_update=True)
    if cycle.status != "planned":
        raise Refused(f"cycle {cmd.cycle_id} is {cycle.status}, it takes no more participations")
    repo.create_participation(uow.conn, cmd.participation_id, cmd.cycle_id, cmd.user_id,
                              cmd.character_name, cmd.amount)


@command()
def import_wallet_journal(cmd: ImportWalletJournal, uow: UnitOfWork) -> None:
    """A batch of wallet-journal entries arrives; known journal ids are left as they were.
    New entries are handed to the matching step."""
    new = repo.import_entries(uow.conn, cmd.entries, cmd.request_id)
    log.info("journal.imported", entries=len(cmd.entries), new=new)
    if new:
        digest = hashlib.sha256(cmd.request_id.encode()).hexdigest()[:40]
        uow.send("match_payments", request_id=f"import:{digest}")


@command()
def link_payment(cmd: LinkPayment, uow: UnitOfWork) -> None:
    """An admin links a payment to a participation, under the matcher's rules."""
    matching.link_by_hand(uow, cmd.participation_id, cmd.journal_id, cmd.admin_id)


@command()
def open_cycle(cmd: OpenCycle, uow: UnitOfWork) -> None:
    """The cycle opens: unpaid participations expire, the initial capital is reported."""
    matching.open_cycle(uow, cmd.cycle_id)


@command()
def close_cycle(cmd: CloseCycle, uow: UnitOfWork) -> None:
    """The cycle closes: nothing is added or linked after; its account is the closing capital."""
    matching.close_cycle(uow, cmd.cycle_id, cmd.closed_by)


@command(max_retries=20, retry_within_ms=290_000)  # fired every 5 min
def match_payments(cmd: MatchPayments, uow: UnitOfWork) -> None:
    """Match unlinked payments to participations (after imports, every 5 min, on demand)."""
    matching.run(uow, cmd.cycle_id)
