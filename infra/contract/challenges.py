"""Queue ``ballast.challenges`` and the treasury-balancing steps (CONTRACT.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, StrictBool, StrictInt, Field
from typing import Annotated

from infra.contract.base import ActorSpec, Amount, Command, Currency, Identifier, LongText, ShortText

QUEUE = "ballast.challenges"

Side = Literal["YES", "NO"]
Result = Literal["YES", "NO", "VOID"]
MatchCount = Annotated[StrictInt, Field(gt=0, le=10_000)]
MaxParticipants = Annotated[StrictInt, Field(gt=0, le=1_000_000)]


class OpenChallenge(Command):
    challenge_id: Identifier
    title: ShortText
    currency: Currency
    stake: Amount
    admin_created: StrictBool
    #: No join at or after this time (ISO 8601 with offset); absent: open until resolved.
    closes_at: AwareDatetime | None = None
    #: No join beyond this many real participants; absent: no cap.
    max_participants: MaxParticipants | None = None


class JoinChallenge(Command):
    challenge_id: Identifier
    user_id: Identifier
    side: Side


class ConfigureTreasury(Command):
    challenge_id: Identifier
    max_risk: Amount
    notes: LongText
    admin_id: Identifier


class FillTreasury(Command):
    challenge_id: Identifier
    side: Side
    match_count: MatchCount
    admin_id: Identifier


class ResolveChallenge(Command):
    challenge_id: Identifier
    result: Result
    resolved_by: Identifier


# Steps (internal kwargs): a fill is recorded by ``fill_treasury`` and carried by its id.
FillId = Annotated[StrictInt, Field(gt=0)]


class AssignPersonas(Command):
    challenge_id: Identifier
    fill_id: FillId


class CreateTreasuryMatches(Command):
    challenge_id: Identifier
    fill_id: FillId


class SettleChallenge(Command):
    challenge_id: Identifier


class RetryChallengeSettlement(Command):
    """``ballast challenge settle ID --by NAME`` as a message: a settlement that failed for
    good is retried (the seats already paid are skipped)."""

    challenge_id: Identifier
    retried_by: Identifier


SPECS = [
    ActorSpec("open_challenge", QUEUE, OpenChallenge),
    ActorSpec("join_challenge", QUEUE, JoinChallenge),
    ActorSpec("configure_treasury", QUEUE, ConfigureTreasury),
    ActorSpec("fill_treasury", QUEUE, FillTreasury),
    ActorSpec("resolve_challenge", QUEUE, ResolveChallenge),
    ActorSpec("retry_challenge_settlement", QUEUE, RetryChallengeSettlement),
    ActorSpec("assign_personas", "ballast.step.personas", AssignPersonas, step=True),
    ActorSpec("create_treasury_matches", "ballast.step.matches", CreateTreasuryMatches, step=True),
    ActorSpec("settle_challenge", "ballast.step.settlement", SettleChallenge, step=True),
]
