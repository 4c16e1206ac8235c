"""Queue ``ballast.journal`` and the payment matching step (CONTRACT.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, StrictStr, StringConstraints

from infra.contract.base import ActorSpec, Amount, Command, GameId, Identifier, ShortText

QUEUE = "ballast.journal"

#: Outer whitespace is dropped: it would make the memo to send impossible to type.
CharacterName = Annotated[StrictStr, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class RegisterCharacter(Command):
    character_id: GameId
    name: CharacterName
    role: Literal["USER", "LOGISTICS"]


class PlanCycle(Command):
    cycle_id: Identifier


class CreateParticipation(Command):
    participation_id: Identifier
    cycle_id: Identifier
    user_id: Identifier
    character_name: CharacterName
    amount: Amount


class JournalEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    journal_id: Identifier
    character_id: GameId
    date: AwareDatetime
    ref_type: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    amount: StrictInt  # minor units, signed (negative: paid out)
    reason: ShortText = ""
    first_party_id: GameId
    second_party_id: GameId


class ImportWalletJournal(Command):
    entries: Annotated[list[JournalEntry], Field(min_length=1, max_length=5000)]


class LinkPayment(Command):
    participation_id: Identifier
    journal_id: Identifier
    admin_id: Identifier


class OpenCycle(Command):
    cycle_id: Identifier


class CloseCycle(Command):
    cycle_id: Identifier
    closed_by: Identifier


class MatchPayments(Command):
    """Internal step: one matching run, over every planned cycle or only ``cycle_id``."""

    cycle_id: Identifier | None = None


SPECS = [
    ActorSpec("register_character", QUEUE, RegisterCharacter),
    ActorSpec("plan_cycle", QUEUE, PlanCycle),
    ActorSpec("create_participation", QUEUE, CreateParticipation),
    ActorSpec("import_wallet_journal", QUEUE, ImportWalletJournal),
    ActorSpec("link_payment", QUEUE, LinkPayment),
    ActorSpec("open_cycle", QUEUE, OpenCycle),
    ActorSpec("close_cycle", QUEUE, CloseCycle),
    ActorSpec("match_payments", "ballast.step.matching", MatchPayments, step=True),
]

_ = datetime  # AwareDatetime parses ISO 8601 with offset
