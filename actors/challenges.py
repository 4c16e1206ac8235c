"""Treasury balancing actors (SPEC §1): adapters of the handlers in ``services/challenges.py``.

Commands on ``ballast.challenges``; the fill runs as two steps (persona assignment on
``ballast.step.personas``, match creation on ``ballast.step.matches``) and resolution
hands on to the settlement step (``ballast.step.settlement``).
"""

from __future__ import annotations

from infra.contract.challenges import (
    AssignPersonas,
    ConfigureTreasury,
    CreateTreasuryMatches,
    FillTreasury,
    JoinChallenge,
    OpenChallenge,
    ResolveChallenge,
    RetryChallengeSettlement,
    SettleChallenge,
)
from infra.contract.operations import SendDailySummary
from infra.group_commit import Grouping
from infra.messaging import command
from infra.uow import UnitOfWork
from services import challenges


@command()
def open_challenge(cmd: OpenChallenge, uow: UnitOfWork):
    return challenges.open_challenge(cmd, uow)


# The joins of one challenge queue on its row anyway: a worker commits those it holds at
# once together, set-wise, the row locked once (``infra.group_commit``); other challenges'
# in groups of their own.
@command(grouped=Grouping(challenges.join_group, key=challenges.join_user,
                          partition=challenges.join_partition))
def join_challenge(cmd: JoinChallenge, uow: UnitOfWork):
    return challenges.join_challenge(cmd, uow)


@command()
def configure_treasury(cmd: ConfigureTreasury, uow: UnitOfWork):
    return challenges.configure_treasury(cmd, uow)


@command()
def fill_treasury(cmd: FillTreasury, uow: UnitOfWork):
    return challenges.fill_treasury(cmd, uow)


@command()
def resolve_challenge(cmd: ResolveChallenge, uow: UnitOfWork):
    return challenges.resolve_challenge(cmd, uow)


@command()
def assign_personas(cmd: AssignPersonas, uow: UnitOfWork):
    return challenges.assign_personas(cmd, uow)


@command()
def create_treasury_matches(cmd: CreateTreasuryMatches, uow: UnitOfWork):
    return challenges.create_treasury_matches(cmd, uow)


@command(transactional=False)  # one transaction per batch of seats
def settle_challenge(cmd: SettleChallenge, uow: UnitOfWork):
    return challenges.settle_challenge(cmd, uow)


@command()
def send_daily_summary(cmd: SendDailySummary, uow: UnitOfWork):
    return challenges.send_daily_summary(cmd, uow)


@command()
def retry_challenge_settlement(cmd: RetryChallengeSettlement, uow: UnitOfWork):
    return challenges.retry_challenge_settlement(cmd, uow)
