"""Settling a market and rolling a settlement back, in bulk, inside one unit of work.

A settlement is one database transaction, done set-based by the database: the domain
computes the terms (``domain.markets.terms``); one statement computes every commitment's
line from them (``repository.line_columns``, ``domain.markets.line`` in SQL, the terms as
bound parameters) into a temporary table, in ascending wallet-account id (the lock
order); then one INSERT … SELECT each writes the audit lines, the payouts (one ledger
transaction per ``BATCH`` commitments that pays anyone, through ``ledger_post_many``:
locks, limits and balances as for any posting), the wallet audit and the users'
notifications, and one UPDATE settles the commitments; then fees and breakage leave the
escrow in one more transaction.  Python holds the totals, never the commitments, so
memory is flat whatever the market.  A crash anywhere before commit leaves nothing
behind; after commit the distribution is ``completed`` and a redelivery finds nothing
to do.

A rollback reverses every ledger transaction the distribution posted
(reversals, never deletes), returns the commitments to active and leaves the
market ``closed``: resolvable again, taking no new commitments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from domain import accounts
from domain.errors import LedgerError, Refused
from domain.ledger import Posting
from domain.markets import (
    CLOSED,
    COMPLETED,
    DISPUTE_ROLLED_BACK,
    DISPUTED,
    FAILED,
    PENDING,
    ROLLED_BACK,
    SETTLED,
    SETTLING,
    VOIDED,
    Outcome,
    Terms,
    breakage,
    terms,
)
from infra import alerts, faults, guard, ledger, wallets
from infra.errors import Transient
from infra.logs import get_logger
from infra.settings import get_settings
from infra.markets import repository as repo
from infra.uow import UnitOfWork

log = get_logger(__name__)

#: Commitments per batch: one ledger transaction (of those the batch pays) each.
BATCH = get_settings().market_settle_batch
#: work_mem of a settlement's transaction: its sorts and hashes of every commitment.
SETTLE_WORK_MEM = "64MB"


class SettlementPending(Transient):
    """A rollback arrived while the settlement step has not run yet: retried (transient)."""


def escrow_account(market_id: str) -> str:
    return accounts.market_escrow(market_id)


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
    """Pay out a pending distribution.  None when it is no longer pending (nothing done)."""
    conn = uow.conn
    market_id = repo.get_distribution(conn, distribution_id).market_id
    market = repo.get_market(conn, market_id, lock="update")
    dist = repo.get_distribution(conn, distribution_id, lock=True)
    if dist.status != PENDING:
        log.info("market.settle_skipped", market_id=market_id, distribution_id=distribution_id,
                 status=dist.status)
        return None
    cur, escrow = market.currency, escrow_account(market_id)
    t = terms(repo.option_totals(conn, market_id), Outcome(dist.winning_option_id),
              market.house_fee_bps, market.creator_fee_bps)
    _check_escrow_holds(conn, escrow, cur, t.pool)

    kind = "refund" if t.refunding else "payout"
    # Set-based: the database computes every line from the domain's terms (bound
    # parameters) into a temporary table, then writes the audit lines, the wallet audit
    # and the notifications each in one statement, the ledger transactions in one
    # statement per batch of commitments (one transaction each, as before).  Nothing per
    # commitment passes through Python.
    # Sorts and hashes of 100,000 rows fit in memory (this transaction only).
    conn.execute(text(f"SET LOCAL work_mem = '{SETTLE_WORK_MEM}'"))
    staged = repo.stage_lines(conn, market_id, t, batch or BATCH)
    paid, count, winners = staged["paid"], staged["commitments"], staged["winners"]
    # The commitments are settled in one UPDATE (HOT: migration 0015), then the lines.
    repo.set_commitments_status(conn, market_id, "active", "settled")
    repo.add_staged_lines(conn, distribution_id)
    txns: list[int] = []
    if staged["batches"]:
        params = {"m": market_id, "d": distribution_id, "cur": cur, "escrow": escrow,
                  "kind": kind}
        payouts = repo.staged_payouts_sql()
        txns = [ledger.post_select(conn, *payouts, {**params, "batch": b})[0]
                for b in staged["batches"]]
        guard.record_select(conn, kind, _STAGED_AUDIT,
                            {**params, "batches": staged["batches"], "txns": txns})
        repo.add_transactions(conn, distribution_id, txns, f"{kind}s")
        for txn, wallets in zip(txns, staged["wallets"]):
            guard.alerts_after(uow, txn, wallets)
    faults.point("settle_batch", "settle_market")

    left = breakage(t, paid)
    fees = _fee_postings(market.market_id, market.creator_id, cur, t, left)
    if fees:
        txn = ledger.post(conn, fees, kind="market_fees",
                          memo=f"market {market_id}: house fee, creator fee, breakage",
                          idempotency_key=f"market:{market_id}:distribution:{distribution_id}:fees",
                          metadata={"market_id": market_id, "distribution_id": distribution_id,
                                    "house_fee": t.house_fee, "creator_fee": t.creator_fee,
                                    "breakage": left})
        repo.add_transaction(conn, distribution_id, txn, "fees")
        txns.append(txn)
    _check_escrow_holds(conn, escrow, cur, 0)

    repo.complete_distribution(conn, distribution_id, t, left, paid, count, winners)
    repo.drop_stage(conn)
    repo.set_status(conn, market_id, VOIDED if t.kind == "void" else SETTLED)
    alerts.resolve_alert(uow, failure_alert_key(distribution_id), note="settled on retry")
    done = Settled(market_id, distribution_id, t, left, paid, count, winners, txns)
    uow.emit("market.settled", done.event(cur))
    _notify_users(uow, "market.payout", distribution_id, market_id, cur, only_paid=False)
    return done


#: The wallet audit of the staged payouts (``guard.record_select``): one line per paid
#: commitment, in lock order, with the wallet's balance before it.  The wallets are locked
#: (the payouts are posted), so their balance now less this settlement's payouts to them,
#: plus those before this line, is the balance before this line.
_STAGED_AUDIT = (
    "SELECT t.id AS transaction_id, s.user_id, CAST(:cur AS text) AS currency, "
    "s.payout AS amount, a.balance - sum(s.payout) OVER (PARTITION BY s.wallet_account_id) "
    "+ sum(s.payout) OVER (PARTITION BY s.wallet_account_id ORDER BY s.ord) - s.payout "
    "AS balance_before, 'market ' || CAST(:m AS text) || ' ' || s.result AS reason, "
    "jsonb_build_object('market_id', CAST(:m AS text), 'distribution_id', CAST(:d AS bigint), "
    "'commitment_id', s.commitment_id) AS metadata, s.ord "
    "FROM settle_lines s JOIN accounts a ON a.id = s.wallet_account_id "
    "JOIN unnest(CAST(:batches AS bigint[]), CAST(:txns AS bigint[])) AS t(batch, id) "
    "ON t.batch = s.batch WHERE s.payout > 0"
)


def _fee_postings(market_id: str, creator_id: str, cur: str, t: Terms, left: int) -> list[Posting]:
    """House fee and breakage to ``house:{CUR}``, creator fee to ``creator:{id}:{CUR}``."""
    credits = [(accounts.house(cur), t.house_fee), (accounts.creator(creator_id, cur), t.creator_fee),
               (accounts.house(cur), left)]
    postings = [Posting(acc, cur, amt) for acc, amt in credits if amt > 0]
    total = sum(p.amount for p in postings)
    return [Posting(escrow_account(market_id), cur, -total), *postings] if total else []


def _check_escrow_holds(conn: Connection, escrow: str, cur: str, expected: int) -> None:
    ledger.ensure_accounts(conn, {escrow: cur})
    held = ledger.lock_accounts(conn, [escrow])[escrow].balance
    if held != expected:
        raise LedgerError(f"{escrow} holds {held}, expected {expected}: the books disagree "
                          "with the commitments; nothing was paid")


def _notify_users(uow: UnitOfWork, event: str, distribution_id: int, market_id: str, cur: str,
                  *, only_paid: bool) -> int:
    """One notification per user (not per commitment), built by the database in one
    statement; small markets' go out right after commit, large ones' via the outbox sweeper."""
    return uow.emit_select(
        event, repo.user_results_sql(only_paid=only_paid),
        {"distribution_id": distribution_id, "market_id": market_id, "currency": cur},
    )


# --- rollback -----------------------------------------------------------------------------

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
    """Reverse the market's completed distribution.  None when it is already rolled back."""
    conn = uow.conn
    market = repo.get_market(conn, market_id, lock="update")
    dist = repo.latest_distribution(conn, market_id, lock=True)
    if dist is None:
        raise Refused(f"market {market_id} was never resolved: nothing to roll back")
    if dist.status == ROLLED_BACK:
        log.info("market.rollback_skipped", market_id=market_id, distribution_id=dist.id,
                 detail="already rolled back")
        return None
    if dist.status == FAILED:
        raise Refused(f"market {market_id}: distribution {dist.id} failed and paid nothing; "
                      "nothing to roll back")
    if dist.status == PENDING:
        raise SettlementPending(f"market {market_id}: distribution {dist.id} is still being "
                                "settled; the rollback will be retried")
    assert dist.status == COMPLETED and market.status in (SETTLED, VOIDED, DISPUTED)
    reversals: dict[int, int] = {}
    for txn, purpose in repo.transactions_of(conn, dist.id):
        memo = f"market {market_id}: rollback of distribution {dist.id} ({purpose})"
        reversals[txn] = wallets.reverse_with_audit(uow, txn, kind="market_rollback", memo=memo,
                                                     reason=reason, by=by)
        repo.set_reversal(conn, txn, reversals[txn])
    repo.roll_back_distribution(conn, dist.id, by, reason)
    repo.set_commitments_status(conn, market_id, "settled", "active")
    repo.set_status(conn, market_id, CLOSED)
    dispute = repo.open_dispute(conn, market_id)
    if dispute is not None:  # the dispute ends here: the resolution was rolled back
        repo.end_dispute(conn, dispute.id, DISPUTE_ROLLED_BACK, by, reason)
    done = RolledBack(market_id, dist.id, reversals)
    uow.emit("market.rolled_back", {**done.event(reason, by),
                                    "dispute_id": dispute.id if dispute else None})
    _notify_users(uow, "market.payout_reversed", dist.id, market_id, market.currency,
                  only_paid=True)
    return done




# --- a settlement that failed for good, and its retry ------------------------------------------

def failure_alert_key(distribution_id: int) -> str:
    return f"market_settlement_failed:{distribution_id}"


def record_failure(uow: UnitOfWork, market_id: str, distribution_id: int, reason: str) -> bool:
    """The distribution is ``failed`` and the market ``closed`` (resolvable again, or
    retried with ``ballast market settle``); admins are alerted.  False when it was no
    longer pending (nothing recorded)."""
    repo.get_market(uow.conn, market_id, lock="update")
    dist = repo.get_distribution(uow.conn, distribution_id, lock=True)
    if dist.status != PENDING:
        return False
    repo.fail_distribution(uow.conn, dist.id, reason)
    repo.set_status(uow.conn, market_id, CLOSED)
    alerts.raise_alert(uow, kind="market_settlement_failed", severity="critical",
                       subject=f"market {market_id}: settlement failed: {reason}"[:300],
                       dedupe_key=failure_alert_key(dist.id),
                       data={"market_id": market_id, "distribution_id": dist.id,
                             "reason": reason[:500],
                             "retry": f"ballast market settle {market_id} --by NAME"})
    return True


def retry(uow: UnitOfWork, market_id: str, by: str) -> int:
    """The latest distribution failed: pending again, the market settling, and a new
    ``settle_market`` after commit.  The settlement pays a pending distribution once,
    in one transaction, so a retry can never pay twice.  Returns the distribution id."""
    conn = uow.conn
    market = repo.get_market(conn, market_id, lock="update")
    dist = repo.latest_distribution(conn, market_id, lock=True)
    if dist is None:
        raise Refused(f"market {market_id} was never resolved: nothing to settle")
    market.check_retryable(dist.status)
    attempt = repo.retry_distribution(conn, dist.id, by)
    repo.set_status(conn, market_id, SETTLING)
    uow.send("settle_market", request_id=f"settle_market:{dist.id}:retry:{attempt}",
             market_id=market_id, distribution_id=dist.id)
    log.info("market.settlement_retried", market_id=market_id, distribution_id=dist.id,
             retry=attempt, by=by)
    return dist.id
