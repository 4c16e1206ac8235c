"""Markets: open, commit (a wager), resolve or void, settle in bulk, roll back (SPEC §2)."""

from __future__ import annotations

from dramatiq.middleware import TimeLimitExceeded

from domain.errors import BallastError, Refused
from domain.markets import (
    COMPLETED,
    DISPUTE_CONFIRMED,
    DISPUTED,
    PENDING,
    SETTLING,
    Market,
    status_after_settlement,
)
from domain.wallet import WalletChange
from infra.attempts import final_attempt
from infra.contract.markets import (
    ConfirmMarket,
    DisputeMarket,
    OpenMarket,
    PlaceCommitment,
    ResolveMarket,
    RollbackMarket,
    SettleMarket,
    VoidMarket,
)
from infra.logs import get_logger
from infra.markets import escrow_account, record_failure, repository, roll_back, settle
from infra.messaging import command
from infra.uow import UnitOfWork
from services import wallets

log = get_logger(__name__)

#: A settlement of 100,000 commitments takes seconds; leave room, stay below
#: RabbitMQ's consumer timeout (30 min).
SETTLE_TIME_LIMIT_MS = 10 * 60 * 1000  # ms


@command()
def open_market(cmd: OpenMarket, uow: UnitOfWork) -> None:
    """A new market; a resend of the same definition changes nothing."""
    market = Market.open(cmd.market_id, cmd.kind, [o.option_id for o in cmd.options], cmd.currency,
                         cmd.creator_id, cmd.creator_fee_bps, cmd.house_fee_bps)
    existing = repository.definition(uow.conn, cmd.market_id)
    if existing is not None:
        if existing != cmd.model_dump(exclude={"request_id"}):
            raise Refused(f"market {cmd.market_id} already exists with another definition")
        log.info("market.exists", market_id=cmd.market_id)
        return
    repository.add_market(uow.conn, market, cmd.title, [o.label for o in cmd.options])


@command()
def place_commitment(cmd: PlaceCommitment, uow: UnitOfWork) -> None:
    """Move the amount from the user's wallet into the market escrow (a wager: guarded)."""
    market = repository.get_market(uow.conn, cmd.market_id, lock="share")
    if _known_commitment(uow, cmd):
        return
    c = market.commit(cmd.commitment_id, cmd.user_id, cmd.amount, option_id=cmd.option_id,
                      position=cmd.position)
    change = WalletChange(cmd.user_id, market.currency, -cmd.amount, "wager",
                          reason=f"market {market.market_id}: {c.option_id}",
                          performed_by=cmd.user_id,
                          metadata={"market_id": market.market_id, "commitment_id": c.commitment_id})
    txn = wallets.apply_changes(uow, [change], counter_account=escrow_account(market.market_id),
                                kind="market_commitment", memo=f"commitment {c.commitment_id}",
                                idempotency_key=f"market_commitment:{c.commitment_id}",
                                metadata={"market_id": market.market_id, "option_id": c.option_id})
    repository.add_commitment(uow.conn, market.market_id, c, cmd.position, change.account, txn)


@command()
def resolve_market(cmd: ResolveMarket, uow: UnitOfWork) -> None:
    """Name the winning option and hand the payout to the settlement step."""
    _resolve(uow, cmd.market_id, cmd.winning_option_id, cmd.resolved_by, None)


@command()
def void_market(cmd: VoidMarket, uow: UnitOfWork) -> None:
    """Void the market: the settlement step refunds every commitment in full."""
    _resolve(uow, cmd.market_id, None, cmd.resolved_by, cmd.reason)


@command()
def rollback_market(cmd: RollbackMarket, uow: UnitOfWork) -> None:
    """Reverse the market's distribution; the market can be resolved again."""
    roll_back(uow, cmd.market_id, reason=cmd.reason, by=cmd.requested_by)


@command()
def dispute_market(cmd: DisputeMarket, uow: UnitOfWork) -> None:
    """Hold a resolved market ``disputed`` (who, why); nothing is paid or taken back."""
    market = repository.get_market(uow.conn, cmd.market_id, lock="update")
    if repository.open_dispute(uow.conn, cmd.market_id) is not None:
        raise Refused(f"market {cmd.market_id} is already disputed: confirm it or roll it back first")
    market.check_disputable()
    dist = repository.latest_distribution(uow.conn, cmd.market_id)
    assert dist is not None and dist.status == COMPLETED
    dispute = repository.add_dispute(uow.conn, cmd.market_id, dist.id, cmd.reason, cmd.disputed_by)
    repository.set_status(uow.conn, cmd.market_id, DISPUTED)
    uow.emit("market.disputed", {"market_id": cmd.market_id, "dispute_id": dispute,
                                 "distribution_id": dist.id, "previous_status": market.status,
                                 "reason": cmd.reason, "disputed_by": cmd.disputed_by})


@command()
def confirm_market(cmd: ConfirmMarket, uow: UnitOfWork) -> None:
    """The disputed resolution stands: the dispute ends ``confirmed``, no money moves."""
    market = repository.get_market(uow.conn, cmd.market_id, lock="update")
    market.check_confirmable()
    dispute = repository.open_dispute(uow.conn, cmd.market_id)
    assert dispute is not None  # a disputed market has its open dispute
    status = status_after_settlement(repository.distribution_kind(uow.conn, dispute.distribution_id))
    repository.end_dispute(uow.conn, dispute.id, DISPUTE_CONFIRMED, cmd.confirmed_by, cmd.note or None)
    repository.set_status(uow.conn, cmd.market_id, status)
    uow.emit("market.confirmed", {"market_id": cmd.market_id, "dispute_id": dispute.id,
                                  "distribution_id": dispute.distribution_id, "status": status,
                                  "confirmed_by": cmd.confirmed_by, "note": cmd.note})


@command(transactional=False, time_limit=SETTLE_TIME_LIMIT_MS)
def settle_market(cmd: SettleMarket) -> None:
    """Pay the distribution out in bulk.  A settlement that fails for good (refused, or a
    transient failure on its last attempt) is recorded as ``failed`` with an alert."""
    try:
        with UnitOfWork(actor="settle_market", request_id=cmd.request_id, payload=cmd) as uow:
            if not uow.claim():
                return
            settle(uow, cmd.distribution_id)
            uow.commit()
    except (Exception, TimeLimitExceeded) as exc:
        if final_attempt(exc):
            _record_failure(cmd, exc)
        raise


def _resolve(uow: UnitOfWork, market_id: str, winner: str | None, by: str, reason: str | None) -> None:
    market = repository.get_market(uow.conn, market_id, lock="update")
    live = repository.latest_distribution(uow.conn, market_id)
    if live is not None and live.status in (PENDING, COMPLETED) and live.winning_option_id == winner:
        log.info("market.already_resolved", market_id=market_id, distribution_id=live.id)
        return  # resolving twice pays once
    market.check_resolvable(winner)
    dist = repository.add_distribution(uow.conn, market_id, winner, by, reason)
    repository.set_status(uow.conn, market_id, SETTLING)
    # After a dispute was rolled back, the dispute records how the market was re-resolved.
    repository.record_reresolution(uow.conn, market_id, dist, winner or "void")
    uow.send("settle_market", request_id=f"settle_market:{dist}", market_id=market_id,
             distribution_id=dist)


def _known_commitment(uow: UnitOfWork, cmd: PlaceCommitment) -> bool:
    """True for a resend of a commitment already placed; Refused when the id is reused."""
    known = repository.find_commitment(uow.conn, cmd.commitment_id)
    if known is None:
        return False
    same = (known["market_id"], known["user_id"], known["amount"]) == (
        cmd.market_id, cmd.user_id, cmd.amount) and cmd.option_id in (None, known["option_id"]) \
        and cmd.position == known["position"]
    if not same:
        raise Refused(f"commitment {cmd.commitment_id} already exists with other terms")
    log.info("market.commitment_exists", commitment_id=cmd.commitment_id)
    return True


def _record_failure(cmd: SettleMarket, exc: BaseException) -> None:
    """The distribution is ``failed`` and the market resolvable again (or retried with
    ``ballast market settle``); admins are alerted.  In a transaction of its own."""
    # A transient failure out of retries names its kind; a refusal is its own sentence.
    reason = str(exc) if isinstance(exc, BallastError) else f"{type(exc).__name__}: {exc}"
    try:
        with UnitOfWork() as uow:
            if record_failure(uow, cmd.market_id, cmd.distribution_id, reason):
                uow.commit()
    except Exception as unrecorded:  # the database is the cause: the dead letter stays
        log.error("market.settlement_failure_unrecorded", error=str(unrecorded))
