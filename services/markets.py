"""Market payouts (SPEC §2): open, commit (a wager), resolve or void, settle in bulk,
dispute, confirm, roll back, and retry a settlement that failed.

    open_market              a market is opened; a resend of the same definition changes nothing
    place_commitment         the amount moves from the user's wallet into the market escrow
    resolve_market           the winning option is named; the settlement step pays
    void_market              the market is voided; the settlement step refunds everyone
    settle_market            the settlement step: the distribution is paid out, once
    rollback_market          every ledger transaction of the distribution is reversed
    dispute_market           a resolved market is held ``disputed``; no money moves
    confirm_market           the disputed resolution stands; no money moves
    retry_market_settlement  a failed settlement is pending again and handed to the step

A settlement is one database transaction: the domain computes the terms
(``domain.markets.terms``), the repository pays every line from them set-based
(``uow.markets.pay_lines``), then fees and breakage leave the escrow in one more ledger
transaction.  Python holds the totals, never the commitments, so memory is flat whatever
the market.  A crash before commit leaves nothing behind; after commit the distribution
is ``completed`` and a redelivery finds nothing to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from domain import accounts, request_ids
from domain.errors import Refused
from domain.ledger import Posting
from domain.markets import (
    CLOSED,
    COMPLETED,
    DISPUTE_CONFIRMED,
    DISPUTE_ROLLED_BACK,
    DISPUTED,
    FAILED,
    PENDING,
    ROLLED_BACK,
    SETTLED,
    SETTLING,
    VOIDED,
    Market,
    Outcome,
    Terms,
    breakage,
    status_after_settlement,
    terms,
)
from domain.resends import check_same_terms
from domain.wallet import WalletChange
from infra import faults
from infra.contract.markets import (
    ConfirmMarket,
    DisputeMarket,
    OpenMarket,
    PlaceCommitment,
    ResolveMarket,
    RetryMarketSettlement,
    RollbackMarket,
    SettleMarket,
    VoidMarket,
)
from infra.errors import Transient
from infra.logs import get_logger
from infra.settings import get_settings
from infra.uow import UnitOfWork
from services import payouts, wallets

log = get_logger(__name__)

#: Commitments per batch: one ledger transaction (of those the batch pays) each.
BATCH = get_settings().market_settle_batch


class SettlementPending(Transient):
    """A rollback arrived while the settlement step has not run yet: retried (transient)."""


def escrow_account(market_id: str) -> str:
    return accounts.market_escrow(market_id)


def failure_alert_key(distribution_id: int) -> str:
    return f"market_settlement_failed:{distribution_id}"


# --- the commands ---------------------------------------------------------------------------

def open_market(cmd: OpenMarket, uow: UnitOfWork) -> None:
    """A new market; a resend of the same definition changes nothing."""
    market = Market.open(cmd.market_id, cmd.kind, [o.option_id for o in cmd.options], cmd.currency,
                         cmd.creator_id, cmd.creator_fee_bps, cmd.house_fee_bps)
    existing = uow.markets.definition(cmd.market_id)
    if existing is not None:
        check_same_terms(f"market {cmd.market_id}", existing, cmd.model_dump(exclude={"request_id"}))
        log.info("market.exists", market_id=cmd.market_id)
        return
    uow.markets.add(market, cmd.title, [o.label for o in cmd.options])


def place_commitment(cmd: PlaceCommitment, uow: UnitOfWork) -> None:
    """Move the amount from the user's wallet into the market escrow (a wager: guarded)."""
    market = uow.markets.get(cmd.market_id, lock="share")
    if _known_commitment(uow, cmd):
        return
    c = market.commit(cmd.commitment_id, cmd.user_id, cmd.amount, option_id=cmd.option_id,
                      position=cmd.position)
    wager = WalletChange(cmd.user_id, market.currency, -cmd.amount, "wager",
                         reason=f"market {market.market_id}: {c.option_id}",
                         performed_by=cmd.user_id,
                         metadata={"market_id": market.market_id, "commitment_id": c.commitment_id})
    txn = wallets.apply_changes(uow, [wager], counter_account=accounts.market_escrow(market.market_id),
                                kind="market_commitment", memo=f"commitment {c.commitment_id}",
                                idempotency_key=f"market_commitment:{c.commitment_id}",
                                metadata={"market_id": market.market_id, "option_id": c.option_id})
    uow.markets.add_commitment(market, c, cmd.position, wager, txn)


def resolve_market(cmd: ResolveMarket, uow: UnitOfWork) -> None:
    """Name the winning option and hand the payout to the settlement step."""
    _resolve(uow, cmd.market_id, cmd.winning_option_id, cmd.resolved_by, None)


def void_market(cmd: VoidMarket, uow: UnitOfWork) -> None:
    """Void the market: the settlement step refunds every commitment in full."""
    _resolve(uow, cmd.market_id, None, cmd.resolved_by, cmd.reason)


def rollback_market(cmd: RollbackMarket, uow: UnitOfWork) -> "RolledBack | None":
    """Reverse the market's distribution; the market can be resolved again."""
    return roll_back(uow, cmd.market_id, reason=cmd.reason, by=cmd.requested_by)


def dispute_market(cmd: DisputeMarket, uow: UnitOfWork) -> None:
    """Hold a resolved market ``disputed`` (who, why); nothing is paid or taken back."""
    market = uow.markets.get(cmd.market_id, lock="update")
    if uow.markets.open_dispute(cmd.market_id) is not None:
        raise Refused(f"market {cmd.market_id} is already disputed: confirm it or roll it back first")
    market.check_disputable()
    dist = uow.markets.latest_distribution(cmd.market_id)
    assert dist is not None and dist.status == COMPLETED
    dispute = uow.markets.add_dispute(cmd.market_id, dist.id, cmd.reason, cmd.disputed_by)
    uow.markets.set_status(cmd.market_id, DISPUTED)
    uow.emit("market.disputed", {"market_id": cmd.market_id, "dispute_id": dispute,
                                 "distribution_id": dist.id, "previous_status": market.status,
                                 "reason": cmd.reason, "disputed_by": cmd.disputed_by})


def confirm_market(cmd: ConfirmMarket, uow: UnitOfWork) -> None:
    """The disputed resolution stands: the dispute ends ``confirmed``, no money moves."""
    market = uow.markets.get(cmd.market_id, lock="update")
    market.check_confirmable()
    dispute = uow.markets.open_dispute(cmd.market_id)
    assert dispute is not None  # a disputed market has its open dispute
    status = status_after_settlement(uow.markets.distribution_kind(dispute.distribution_id))
    uow.markets.end_dispute(dispute.id, DISPUTE_CONFIRMED, cmd.confirmed_by, cmd.note or None)
    uow.markets.set_status(cmd.market_id, status)
    uow.emit("market.confirmed", {"market_id": cmd.market_id, "dispute_id": dispute.id,
                                  "distribution_id": dispute.distribution_id, "status": status,
                                  "confirmed_by": cmd.confirmed_by, "note": cmd.note})


def retry_market_settlement(cmd: RetryMarketSettlement, uow: UnitOfWork) -> int:
    """``ballast market settle ID --by NAME``: the failed settlement is retried, once."""
    return retry(uow, cmd.market_id, cmd.retried_by)


def settle_market(cmd: SettleMarket, uow: UnitOfWork) -> "Settled | None":
    """The settlement step: pay the distribution out in bulk, in one transaction of the
    (unentered) unit of work.  A settlement that fails for good (refused, or a transient
    failure on its last attempt) is recorded as ``failed`` with an alert."""
    return payouts.pay_out(uow, lambda: settle(uow, cmd.distribution_id),
                           lambda reason: _record_failure(uow, cmd, reason), claim=True)


# --- resolving ------------------------------------------------------------------------------

def _resolve(uow: UnitOfWork, market_id: str, winner: str | None, by: str, reason: str | None) -> None:
    market = uow.markets.get(market_id, lock="update")
    live = uow.markets.latest_distribution(market_id)
    if live is not None and live.status in (PENDING, COMPLETED) and live.winning_option_id == winner:
        log.info("market.already_resolved", market_id=market_id, distribution_id=live.id)
        return  # resolving twice pays once
    market.check_resolvable(winner)
    dist = uow.markets.add_distribution(market_id, winner, by, reason)
    uow.markets.set_status(market_id, SETTLING)
    # After a dispute was rolled back, the dispute records how the market was re-resolved.
    uow.markets.record_reresolution(market_id, dist, winner or "void")
    uow.send("settle_market", request_id=request_ids.next_step("settle_market", dist), market_id=market_id,
             distribution_id=dist)


def _known_commitment(uow: UnitOfWork, cmd: PlaceCommitment) -> bool:
    """True for a resend of a commitment already placed; Refused when the id is reused."""
    known = uow.markets.find_commitment(cmd.commitment_id)
    if known is None:
        return False
    wanted = {"market_id": cmd.market_id, "user_id": cmd.user_id, "amount": cmd.amount,
              "position": cmd.position}
    if cmd.option_id is not None:  # a resend may leave the option out
        wanted["option_id"] = cmd.option_id
    check_same_terms(f"commitment {cmd.commitment_id}", known, wanted)
    log.info("market.commitment_exists", commitment_id=cmd.commitment_id)
    return True


# --- settling -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Settled:
    """What a settlement did (the ``market.settled`` event)."""

    market_id: str
    distribution_id: int
    terms: Terms
    breakage: int
    paid: int
    commitments: int
    winners: int
    transactions: list[int]

    def event(self, currency: str) -> dict[str, Any]:
        t = self.terms
        return {"market_id": self.market_id, "distribution_id": self.distribution_id,
                "outcome": t.kind, "winning_option_id": t.winning_option_id,
                "currency": currency, "pool": t.pool, "house_fee": t.house_fee,
                "creator_fee": t.creator_fee, "breakage": self.breakage, "paid": self.paid,
                "commitments": self.commitments, "winners": self.winners,
                "transactions": self.transactions}


def settle(uow: UnitOfWork, distribution_id: int, *, batch: int | None = None) -> Settled | None:
    """Pay out a pending distribution: each winning commitment its floor share of the winner
    pool (everyone in full when refunding), fees and breakage to the house and the creator.
    None when it is no longer pending (nothing done: resolving twice pays once)."""
    market_id = uow.markets.distribution(distribution_id).market_id
    market = uow.markets.get(market_id, lock="update")
    dist = uow.markets.distribution(distribution_id, lock=True)
    if dist.status != PENDING:
        log.info("market.settle_skipped", market_id=market_id, distribution_id=distribution_id,
                 status=dist.status)
        return None
    t = terms(uow.markets.option_totals(market_id), Outcome(dist.winning_option_id),
              market.house_fee_bps, market.creator_fee_bps)
    _check_escrow_holds(uow, market, t.pool)
    paid = uow.markets.pay_lines(market, distribution_id, t, batch or BATCH)
    faults.point("settle_batch", "settle_market")
    left = breakage(t, paid.paid)
    txns = [*paid.transactions, *_take_fees(uow, market, distribution_id, t, left)]
    _check_escrow_holds(uow, market, 0)
    uow.markets.complete_distribution(distribution_id, t, left, paid)
    uow.markets.done_paying()
    uow.markets.set_status(market_id, status_after_settlement(t.kind))
    uow.alerts.resolve(failure_alert_key(distribution_id), note="settled on retry")
    done = Settled(market_id, distribution_id, t, left, paid.paid, paid.commitments, paid.winners,
                   txns)
    uow.emit("market.settled", done.event(market.currency))
    uow.markets.notify_users("market.payout", distribution_id, market, only_paid=False)
    return done


def _take_fees(uow: UnitOfWork, market: Market, distribution_id: int, t: Terms,
               left: int) -> list[int]:
    """The house fee, the creator fee and the breakage leave the escrow in one ledger
    transaction (none when refunding); returns its id, if any."""
    fees = fee_postings(market, t, left)
    if not fees:
        return []
    m = market.market_id
    txn = uow.ledger.post(fees, kind="market_fees",
                          memo=f"market {m}: house fee, creator fee, breakage",
                          idempotency_key=f"market:{m}:distribution:{distribution_id}:fees",
                          metadata={"market_id": m, "distribution_id": distribution_id,
                                    "house_fee": t.house_fee, "creator_fee": t.creator_fee,
                                    "breakage": left})
    uow.markets.add_transactions(distribution_id, [txn], "fees")
    return [txn]


def fee_postings(market: Market, t: Terms, left: int) -> list[Posting]:
    """House fee and breakage to ``house:{CUR}``, creator fee to ``creator:{id}:{CUR}``,
    out of the escrow; none when there is nothing to take (a refund)."""
    cur = market.currency
    credits = [(accounts.house(cur), t.house_fee),
               (accounts.creator(market.creator_id, cur), t.creator_fee),
               (accounts.house(cur), left)]
    postings = [Posting(acc, cur, amt) for acc, amt in credits if amt > 0]
    total = sum(p.amount for p in postings)
    return [Posting(escrow_account(market.market_id), cur, -total), *postings] if total else []


def _check_escrow_holds(uow: UnitOfWork, market: Market, expected: int) -> None:
    payouts.check_escrow(escrow_account(market.market_id), uow.markets.escrow_held(market),
                         expected)


# --- rolling back ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RolledBack:
    market_id: str
    distribution_id: int
    reversals: dict[int, int]  # original transaction id -> its reversal

    def event(self, reason: str, by: str) -> dict[str, Any]:
        return {"market_id": self.market_id, "distribution_id": self.distribution_id,
                "reason": reason, "requested_by": by,
                "reversed": [{"transaction_id": t, "reversal_id": r}
                             for t, r in sorted(self.reversals.items())]}


def roll_back(uow: UnitOfWork, market_id: str, *, reason: str, by: str) -> RolledBack | None:
    """Reverse every ledger transaction of the market's completed distribution (reversals,
    never deletes), return the commitments to active and leave the market ``closed``:
    resolvable again, taking no new commitments.  None when already rolled back."""
    market = uow.markets.get(market_id, lock="update")
    dist = uow.markets.latest_distribution(market_id, lock=True)
    if not _rollback_applies(market_id, dist):
        return None
    assert market.status in (SETTLED, VOIDED, DISPUTED)
    reversals = {txn: uow.markets.reverse(
        txn, memo=f"market {market_id}: rollback of distribution {dist.id} ({purpose})",
        reason=reason, by=by) for txn, purpose in uow.markets.transactions_of(dist.id)}
    uow.markets.roll_back_distribution(dist.id, by, reason)
    uow.markets.set_commitments_status(market_id, "settled", "active")
    uow.markets.set_status(market_id, CLOSED)
    dispute = uow.markets.open_dispute(market_id)
    if dispute is not None:  # the dispute ends here: the resolution was rolled back
        uow.markets.end_dispute(dispute.id, DISPUTE_ROLLED_BACK, by, reason)
    done = RolledBack(market_id, dist.id, reversals)
    uow.emit("market.rolled_back", {**done.event(reason, by),
                                    "dispute_id": dispute.id if dispute else None})
    uow.markets.notify_users("market.payout_reversed", dist.id, market, only_paid=True)
    return done


def _rollback_applies(market_id: str, dist) -> bool:
    """True for a completed distribution; False when already rolled back; else refused
    (never resolved, failed) or retried (still pending)."""
    if dist is None:
        raise Refused(f"market {market_id} was never resolved: nothing to roll back")
    if dist.status == ROLLED_BACK:
        log.info("market.rollback_skipped", market_id=market_id, distribution_id=dist.id,
                 detail="already rolled back")
        return False
    if dist.status == FAILED:
        raise Refused(f"market {market_id}: distribution {dist.id} failed and paid nothing; "
                      "nothing to roll back")
    if dist.status == PENDING:
        raise SettlementPending(f"market {market_id}: distribution {dist.id} is still being "
                                "settled; the rollback will be retried")
    assert dist.status == COMPLETED
    return True


# --- a settlement that failed for good, and its retry ----------------------------------------

def record_failure(uow: UnitOfWork, market_id: str, distribution_id: int, reason: str) -> bool:
    """The distribution is ``failed`` and the market ``closed`` (resolvable again, or
    retried with ``ballast market settle``); admins are alerted.  False when it was no
    longer pending (nothing recorded)."""
    uow.markets.get(market_id, lock="update")
    dist = uow.markets.distribution(distribution_id, lock=True)
    if dist.status != PENDING:
        return False
    uow.markets.fail_distribution(dist.id, reason)
    uow.markets.set_status(market_id, CLOSED)
    uow.alerts.raise_(kind="market_settlement_failed", severity="critical",
                      subject=f"market {market_id}: settlement failed: {reason}"[:300],
                      dedupe_key=failure_alert_key(dist.id),
                      data={"market_id": market_id, "distribution_id": dist.id,
                            "reason": reason[:500],
                            "retry": f"ballast market settle {market_id} --by NAME"})
    return True


def _record_failure(uow: UnitOfWork, cmd: SettleMarket, reason: str) -> None:
    """``record_failure`` in a transaction of its own (the settlement's rolled back)."""
    with uow:
        if record_failure(uow, cmd.market_id, cmd.distribution_id, reason):
            uow.commit()


def retry(uow: UnitOfWork, market_id: str, by: str) -> int:
    """The latest distribution failed: pending again, the market settling, and a new
    ``settle_market`` after commit.  The settlement pays a pending distribution once,
    in one transaction, so a retry can never pay twice.  Returns the distribution id."""
    market = uow.markets.get(market_id, lock="update")
    dist = uow.markets.latest_distribution(market_id, lock=True)
    if dist is None:
        raise Refused(f"market {market_id} was never resolved: nothing to settle")
    market.check_retryable(dist.status)
    attempt = uow.markets.retry_distribution(dist.id, by)
    uow.markets.set_status(market_id, SETTLING)
    uow.send("settle_market", request_id=request_ids.next_step("settle_market", dist.id, "retry", attempt),
             market_id=market_id, distribution_id=dist.id)
    log.info("market.settlement_retried", market_id=market_id, distribution_id=dist.id,
             retry=attempt, by=by)
    return dist.id
