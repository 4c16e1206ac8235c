"""The message contract: every actor, its queue and its kwargs schema (CONTRACT.md)."""

from __future__ import annotations

from infra.contract import challenges, journal, markets, operations, treasury, wallets
from infra.contract.base import ActorSpec, Command, parse

ACTORS: dict[str, ActorSpec] = {
    spec.actor: spec
    for module in (wallets, challenges, markets, treasury, journal, operations)
    for spec in module.SPECS
}

#: Every queue, in a stable order; each also has ``.DQ`` and ``.XQ``.
QUEUES: list[str] = list(dict.fromkeys(spec.queue for spec in ACTORS.values()))

EVENTS_EXCHANGE = "ballast.events"

#: Event names published to ``ballast.events`` (routing key = name).
EVENTS = [
    "command.rejected",
    "balance.change_rejected",
    "match.found",
    "challenge.settled",
    "admin.treasury.match_created",
    "admin.treasury.settlement",
    "admin.treasury.daily_summary",
    "market.settled",
    "market.rolled_back",
    "conversion.completed",
    "conversion.failed",
    "payment.matched",
    "cycle.opened",
    "alert.raised",
    "alert.resolved",
    "wallet.changed",
    "wallet.tier_changed",
    "admin.treasury.fill_shortfall",
    "admin.treasury.fill_failed",
    "market.payout",
    "market.payout_reversed",
    "conversion.frozen",
    "conversion.thawed",
    "conversion.reconciliation_failed",
    # issue 14
    "admin.treasury.settlement_failed",
    "admin.treasury.settlement_retried",
    "market.disputed",
    "market.confirmed",
    "cycle.closed",
]


def spec_for(actor: str) -> ActorSpec:
    try:
        return ACTORS[actor]
    except KeyError:
        raise KeyError(f"unknown actor {actor!r}") from None


__all__ = ["ACTORS", "QUEUES", "EVENTS", "EVENTS_EXCHANGE", "ActorSpec", "Command", "parse", "spec_for"]
