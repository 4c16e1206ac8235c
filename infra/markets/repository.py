"""Markets on PostgreSQL, as the unit of work hands them out (``uow.markets``): markets,
commitments, distributions, their audit lines, ledger transactions and disputes.

``MarketRepository`` is bound to the unit of work's transaction; nothing here commits.
Everything that changes a market locks its row first (``lock="update"``), so
resolutions, settlements and rollbacks of one market are serialised; a commitment takes
the row ``FOR SHARE`` so commitments do not wait on each other.  Ordinary reads and
writes are Core statements on ``infra.db.tables``; the settlement's set-based statements
(every line computed by the database into a temporary table, then INSERT … SELECT,
``ledger.post_select``, ``guard.record_select`` and ``outbox``'s events select) are named
SQL below.  The in-memory twin for handler tests is ``FakeMarkets`` (``infra/uow_fake.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal, Sequence

from sqlalchemy import Connection, func, insert, select, text, update

from domain import accounts
from domain.errors import NotFound
from domain.markets import (
    COMMITMENT,
    COMPLETED,
    DISPUTE,
    DISPUTE_OPEN,
    DISTRIBUTION,
    FAILED,
    MARKET,
    PENDING,
    ROLLED_BACK,
    Commitment,
    Market,
    Terms,
)
from domain.wallet import WalletChange
from infra import guard, ledger, wallets
from infra.db.tables import (
    any_text,
    market_commitments,
    market_disputes,
    market_distribution_lines,
    market_distribution_transactions,
    market_distributions,
    market_options,
    markets,
)
from infra.db.tables import accounts as accounts_table

#: Digits kept of a line's share (an exact fraction in the domain) for the audit.
SHARE_DIGITS = 18
#: work_mem of a settlement's transaction: its sorts and hashes of every commitment.
SETTLE_WORK_MEM = "64MB"
#: The staged lines of the settlement in progress (a temporary table, dropped at commit).
STAGE = "settle_lines"


@dataclass(frozen=True, slots=True)
class DistributionRow:
    id: int
    market_id: str
    kind: str
    winning_option_id: str | None
    status: str
    requested_by: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class DisputeRow:
    id: int
    market_id: str
    distribution_id: int
    status: str


@dataclass(frozen=True, slots=True)
class Paid:
    """What paying a distribution's lines did: ``paid`` (Σ payouts), ``commitments``,
    ``winners`` and the ledger ``transactions`` it posted (one per batch that pays anyone)."""

    paid: int
    commitments: int
    winners: int
    transactions: list[int]


_DIST = market_distributions.c
_DIST_ROW = (_DIST.id, _DIST.market_id, _DIST.kind, _DIST.winning_option_id, _DIST.status,
             _DIST.requested_by, _DIST.reason)
_DISPUTE_ROW = (market_disputes.c.id, market_disputes.c.market_id,
                market_disputes.c.distribution_id, market_disputes.c.status)


class MarketRepository:
    """Markets in the unit of work's transaction.

    Parameters:
      unit: the unit of work (its connection; wagers, reversals, balance alerts and the
        users' notifications go through it).
    """

    def __init__(self, unit) -> None:
        self.unit = unit
        self.conn: Connection = unit.conn

    # --- markets ------------------------------------------------------------------------

    def get(self, market_id: str, lock: Literal["share", "update"] | None = None) -> Market:
        """The market, optionally locked; NotFound when it does not exist."""
        m = markets.c
        query = select(m.market_id, m.kind, m.currency, m.creator_id, m.creator_fee_bps,
                       m.house_fee_bps, m.status).where(m.market_id == market_id)
        if lock is not None:
            query = query.with_for_update(read=lock == "share")
        row = self.conn.execute(query).one_or_none()
        if row is None:
            raise NotFound(f"market {market_id} does not exist")
        options = tuple(self.conn.execute(
            select(market_options.c.option_id).where(market_options.c.market_id == market_id)
            .order_by(market_options.c.ordinal)).scalars())
        return Market(row.market_id, row.kind, options, row.currency, row.creator_id,
                      row.creator_fee_bps, row.house_fee_bps, row.status)

    def definition(self, market_id: str) -> dict[str, Any] | None:
        """What ``open_market`` said about the market (to recognise a resend), or None."""
        m = markets.c
        row = self.conn.execute(
            select(m.market_id, m.title, m.kind, m.currency, m.creator_id, m.creator_fee_bps,
                   m.house_fee_bps).where(m.market_id == market_id)).mappings().one_or_none()
        if row is None:
            return None
        o = market_options.c
        options = [dict(r) for r in self.conn.execute(
            select(o.option_id, o.label).where(o.market_id == market_id).order_by(o.ordinal))
            .mappings()]
        return {**row, "options": options}

    def add(self, market: Market, title: str, labels: Sequence[str]) -> None:
        self.conn.execute(insert(markets).values(
            market_id=market.market_id, title=title, kind=market.kind, currency=market.currency,
            creator_id=market.creator_id, creator_fee_bps=market.creator_fee_bps,
            house_fee_bps=market.house_fee_bps, status=market.status))
        self.conn.execute(insert(market_options), [
            {"market_id": market.market_id, "option_id": o, "label": label, "ordinal": n}
            for n, (o, label) in enumerate(zip(market.options, labels), start=1)])

    def set_status(self, market_id: str, status: str) -> None:
        """Move the market to ``status``, from a status its lifecycle allows (else refused)."""
        m = markets.c
        moved = self.conn.execute(
            update(markets).where(m.market_id == market_id,
                                  m.status == any_text("from", MARKET.sources(status)))
            .values(status=status, updated_at=func.now()).returning(m.market_id)).first()
        if moved is None:
            self._refuse(MARKET, select(m.status).where(m.market_id == market_id), market_id,
                         status)

    def _refuse(self, lifecycle, current_status, key, new: str) -> None:
        """A guarded UPDATE moved nothing: say why (the lifecycle's one-line refusal)."""
        current = self.conn.execute(current_status).scalar_one_or_none()
        if current is None:
            raise NotFound(f"no {lifecycle.entity} {key}")
        lifecycle.check(current, new)

    # --- commitments --------------------------------------------------------------------

    def find_commitment(self, commitment_id: str) -> dict[str, Any] | None:
        c = market_commitments.c
        row = self.conn.execute(
            select(c.commitment_id, c.market_id, c.user_id, c.option_id, c.position, c.method,
                   c.amount, c.status).where(c.commitment_id == commitment_id)
        ).mappings().one_or_none()
        return dict(row) if row else None

    def add_commitment(self, market: Market, c: Commitment, position: str | None,
                       wager: WalletChange) -> None:
        """Post the wager (the wallet into the escrow, guarded) and record the commitment."""
        txn = wallets.apply_changes(self.unit, [wager],
                                    counter_account=accounts.market_escrow(market.market_id),
                                    kind="market_commitment", memo=f"commitment {c.commitment_id}",
                                    idempotency_key=f"market_commitment:{c.commitment_id}",
                                    metadata={"market_id": market.market_id,
                                              "option_id": c.option_id})
        wallet = select(accounts_table.c.id).where(accounts_table.c.code == wager.account)
        self.conn.execute(insert(market_commitments).values(
            commitment_id=c.commitment_id, market_id=market.market_id, user_id=c.user_id,
            option_id=c.option_id, position=position, method=c.method, amount=c.amount,
            wallet_account_id=wallet.scalar_subquery(), transaction_id=txn))

    def option_totals(self, market_id: str) -> dict[str, int]:
        """Σ of the active commitments per option (options nobody backed are absent)."""
        c = market_commitments.c
        return {r.option_id: int(r.total) for r in self.conn.execute(
            select(c.option_id, func.sum(c.amount).label("total"))
            .where(c.market_id == market_id, c.status == "active").group_by(c.option_id))}

    def set_commitments_status(self, market_id: str, old: str, new: str) -> int:
        COMMITMENT.check(old, new)
        c = market_commitments.c
        return self.conn.execute(update(market_commitments)
                                 .where(c.market_id == market_id, c.status == old)
                                 .values(status=new)).rowcount

    # --- distributions ------------------------------------------------------------------

    def add_distribution(self, market_id: str, winning_option_id: str | None,
                         requested_by: str, reason: str | None) -> int:
        return self.conn.execute(insert(market_distributions).values(
            market_id=market_id, kind="void" if winning_option_id is None else "resolved",
            winning_option_id=winning_option_id, requested_by=requested_by, reason=reason)
            .returning(_DIST.id)).scalar_one()

    def distribution(self, distribution_id: int, *, lock: bool = False) -> DistributionRow:
        query = select(*_DIST_ROW).where(_DIST.id == distribution_id)
        row = self.conn.execute(query.with_for_update() if lock else query).one_or_none()
        if row is None:
            raise NotFound(f"distribution {distribution_id} does not exist")
        return DistributionRow(*row)

    def latest_distribution(self, market_id: str, *, lock: bool = False) -> DistributionRow | None:
        query = select(*_DIST_ROW).where(_DIST.market_id == market_id).order_by(
            _DIST.id.desc()).limit(1)
        row = self.conn.execute(query.with_for_update() if lock else query).one_or_none()
        return DistributionRow(*row) if row else None

    def distribution_kind(self, distribution_id: int) -> str:
        return self.conn.execute(select(_DIST.kind).where(_DIST.id == distribution_id)).scalar_one()

    def _move_distribution(self, distribution_id: int, status: str, **columns: Any) -> None:
        moved = self.conn.execute(
            update(market_distributions)
            .where(_DIST.id == distribution_id,
                   _DIST.status == any_text("from", DISTRIBUTION.sources(status)))
            .values(status=status, **columns).returning(_DIST.id)).first()
        if moved is None:
            self._refuse(DISTRIBUTION, select(_DIST.status).where(_DIST.id == distribution_id),
                         distribution_id, status)

    def complete_distribution(self, distribution_id: int, t: Terms, breakage: int,
                              paid: Paid) -> None:
        self._move_distribution(
            distribution_id, COMPLETED, kind=t.kind, pool=t.pool, house_fee=t.house_fee,
            creator_fee=t.creator_fee, winner_pool=t.winner_pool, winning_total=t.winning_total,
            breakage=breakage, paid=paid.paid, commitments=paid.commitments,
            winners=paid.winners, completed_at=func.now())

    def fail_distribution(self, distribution_id: int, failure: str) -> None:
        self.conn.execute(
            update(market_distributions)
            .where(_DIST.id == distribution_id,
                   _DIST.status == any_text("from", DISTRIBUTION.sources(FAILED)))
            .values(status=FAILED, failure=failure[:500]))

    def roll_back_distribution(self, distribution_id: int, by: str, reason: str) -> None:
        self._move_distribution(distribution_id, ROLLED_BACK, rolled_back_at=func.now(),
                                rolled_back_by=by, rollback_reason=reason)

    def retry_distribution(self, distribution_id: int, by: str) -> int:
        """failed → pending again (its settlement is retried); returns the retry's number."""
        return int(self.conn.execute(
            update(market_distributions)
            .where(_DIST.id == distribution_id,
                   _DIST.status == any_text("from", DISTRIBUTION.sources(PENDING)))
            .values(status=PENDING, retries=_DIST.retries + 1, retried_by=by,
                    retried_at=func.now())
            .returning(_DIST.retries)).scalar_one())

    # --- the distribution's money -------------------------------------------------------

    def escrow_held(self, market: Market) -> int:
        """The market escrow's balance, its row locked (opened when missing)."""
        escrow = accounts.market_escrow(market.market_id)
        ledger.ensure_accounts(self.conn, {escrow: market.currency})
        return ledger.lock_accounts(self.conn, [escrow])[escrow].balance

    def pay_lines(self, market: Market, distribution_id: int, t: Terms, batch: int) -> Paid:
        """Pay every active commitment its line under ``t``, set-based: the database
        computes every line from the domain's terms (bound parameters) into a temporary
        table, then writes the audit lines, the wallet audit and the notifications each in
        one statement, and the ledger transactions in one statement per batch of
        ``batch`` commitments (one transaction each).  Nothing per commitment passes
        through Python; the commitments end ``settled``."""
        kind = "refund" if t.refunding else "payout"
        # Sorts and hashes of 100,000 rows fit in memory (this transaction only).
        self.conn.execute(text(f"SET LOCAL work_mem = '{SETTLE_WORK_MEM}'"))
        staged = stage_lines(self.conn, market.market_id, t, batch)
        # The commitments are settled in one UPDATE (HOT: migration 0015), then the lines.
        self.set_commitments_status(market.market_id, "active", "settled")
        add_staged_lines(self.conn, distribution_id)
        txns: list[int] = []
        if staged["batches"]:
            params = {"m": market.market_id, "d": distribution_id, "cur": market.currency,
                      "escrow": accounts.market_escrow(market.market_id), "kind": kind}
            payouts = staged_payouts_sql()
            txns = [ledger.post_select(self.conn, *payouts, {**params, "batch": b})[0]
                    for b in staged["batches"]]
            guard.record_select(self.conn, kind, STAGED_AUDIT,
                                {**params, "batches": staged["batches"], "txns": txns})
            self.add_transactions(distribution_id, txns, f"{kind}s")
            for txn, paid_wallets in zip(txns, staged["wallets"]):
                guard.alerts_after(self.unit, txn, paid_wallets)
        return Paid(staged["paid"], staged["commitments"], staged["winners"], txns)

    def done_paying(self) -> None:
        """The staged lines are no longer needed (they would go at commit anyway)."""
        self.conn.execute(text(f"DROP TABLE IF EXISTS pg_temp.{STAGE}"))

    def add_transactions(self, distribution_id: int, transaction_ids: Sequence[int],
                         purpose: str) -> None:
        if transaction_ids:
            self.conn.execute(insert(market_distribution_transactions), [
                {"transaction_id": t, "distribution_id": distribution_id, "purpose": purpose}
                for t in transaction_ids])

    def transactions_of(self, distribution_id: int) -> list[tuple[int, str]]:
        """The ledger transactions a distribution posted (not yet reversed), newest first."""
        t = market_distribution_transactions.c
        return [(r.transaction_id, r.purpose) for r in self.conn.execute(
            select(t.transaction_id, t.purpose)
            .where(t.distribution_id == distribution_id, t.reversal_id.is_(None))
            .order_by(t.transaction_id.desc()))]

    def reverse(self, transaction_id: int, *, memo: str, reason: str, by: str) -> int:
        """Reverse one of a distribution's transactions (the wallet audit kept) and record
        the reversal beside it; returns the reversal's id."""
        reversal = wallets.reverse_with_audit(self.unit, transaction_id, kind="market_rollback",
                                              memo=memo, reason=reason, by=by)
        t = market_distribution_transactions.c
        self.conn.execute(update(market_distribution_transactions)
                          .where(t.transaction_id == transaction_id).values(reversal_id=reversal))
        return reversal

    def notify_users(self, event: str, distribution_id: int, market: Market, *,
                     only_paid: bool) -> int:
        """One notification per user of the distribution (not per commitment), built by
        the database in one statement (``uow.emit_select``: a large market's are left to
        the outbox sweeper)."""
        return self.unit.emit_select(
            event, user_results_sql(only_paid=only_paid),
            {"distribution_id": distribution_id, "market_id": market.market_id,
             "currency": market.currency})

    # --- disputes -----------------------------------------------------------------------

    def open_dispute(self, market_id: str) -> DisputeRow | None:
        d = market_disputes.c
        row = self.conn.execute(select(*_DISPUTE_ROW).where(
            d.market_id == market_id, d.status == DISPUTE_OPEN).with_for_update()).one_or_none()
        return DisputeRow(*row) if row else None

    def add_dispute(self, market_id: str, distribution_id: int, reason: str, by: str) -> int:
        """The partial unique index refuses a second open dispute of a market."""
        return self.conn.execute(insert(market_disputes).values(
            market_id=market_id, distribution_id=distribution_id, reason=reason,
            disputed_by=by).returning(market_disputes.c.id)).scalar_one()

    def end_dispute(self, dispute_id: int, status: str, by: str, note: str | None) -> None:
        d = market_disputes.c
        self.conn.execute(update(market_disputes).where(
            d.id == dispute_id, d.status == any_text("from", DISPUTE.sources(status)))
            .values(status=status, ended_by=by, end_note=note, ended_at=func.now()))

    def record_reresolution(self, market_id: str, distribution_id: int,
                            outcome: str) -> int | None:
        """A market re-resolved after a rolled-back dispute: the dispute records the new
        outcome.  Returns the dispute's id (None when none awaited a re-resolution)."""
        d = market_disputes.c
        awaiting = (select(d.id).where(d.market_id == market_id, d.status == "rolled_back",
                                       d.reresolved_distribution_id.is_(None))
                    .order_by(d.id.desc()).limit(1).scalar_subquery())
        return self.conn.execute(update(market_disputes).where(d.id == awaiting).values(
            reresolved_distribution_id=distribution_id, reresolved_outcome=outcome,
            reresolved_at=func.now()).returning(d.id)).scalar_one_or_none()


# --- the set-based settlement: every line computed by the database --------------------------

def line_params(t: Terms) -> dict[str, Any]:
    """The domain's terms of a distribution, as the parameters of ``line_columns``."""
    return {"_refunding": t.refunding, "_winner": t.winning_option_id, "_pool": t.pool,
            "_wp": t.winner_pool, "_wt": t.winning_total}


def line_columns(amount: str, option: str) -> str:
    """``domain.markets.line`` in SQL, over the columns ``amount`` and ``option`` and the
    terms bound by ``line_params``: the columns ``result``, ``share`` (truncated to
    SHARE_DIGITS places, as ``share_text``), ``payout`` (the floor of amount × winner pool /
    winning total, in exact numeric arithmetic) and ``profit``.  The property test
    ``test_the_database_computes_every_line_as_the_domain`` holds the two equal."""
    won = f"{option} = CAST(:_winner AS text)"
    refunding = "CAST(:_refunding AS boolean)"
    exact = f"CAST({amount} AS numeric)"
    payout = (f"(CASE WHEN {refunding} THEN {amount} WHEN {won} THEN "
              f"CAST(div({exact} * CAST(:_wp AS bigint), NULLIF(CAST(:_wt AS bigint), 0)) "
              "AS bigint) ELSE 0 END)")
    ulp = f"CAST('1e-{SHARE_DIGITS}' AS numeric)"
    scale = f"CAST('1e{SHARE_DIGITS}' AS numeric)"
    share = (f"(CASE WHEN {refunding} THEN div({exact} * {scale}, "
             f"NULLIF(CAST(:_pool AS bigint), 0)) * {ulp} WHEN {won} THEN div({exact} * {scale}, "
             f"NULLIF(CAST(:_wt AS bigint), 0)) * {ulp} ELSE CAST(0 AS numeric) END)")
    result = (f"(CASE WHEN {refunding} THEN 'refunded' WHEN {won} THEN 'won' ELSE 'lost' END)")
    return (f"{result} AS result, {share} AS share, {payout} AS payout, "
            f"{payout} - {amount} AS profit")


def stage_lines(conn: Connection, market_id: str, t: Terms, batch: int) -> dict[str, Any]:
    """Compute every line of the market's active commitments into the temporary table
    ``settle_lines`` (in the lock order: ascending wallet account, then commitment; ``ord``
    1, 2, …, ``batch`` = (ord − 1) div ``batch``), in one statement; return the totals:
    ``commitments``, ``paid``, ``winners`` and, per batch that pays anyone (ascending),
    ``batches`` and ``wallets`` (how many distinct wallets it pays)."""
    conn.execute(text(f"DROP TABLE IF EXISTS pg_temp.{STAGE}"))
    conn.execute(text(
        f"CREATE TEMP TABLE {STAGE} ON COMMIT DROP AS SELECT s.*, "
        "(s.ord - 1) / CAST(:batch AS bigint) AS batch, "
        f"{line_columns('s.amount', 's.option_id')} FROM (SELECT c.commitment_id, c.user_id, "
        "c.option_id, c.method, c.amount, c.wallet_account_id, row_number() OVER "
        "(ORDER BY c.wallet_account_id, c.commitment_id) AS ord FROM market_commitments c "
        "WHERE c.market_id = :m AND c.status = 'active') s"),
        {"m": market_id, "batch": batch, **line_params(t)})
    row = conn.execute(text(
        "SELECT (SELECT count(*) FROM settle_lines) AS commitments, "
        "(SELECT COALESCE(sum(payout), 0) FROM settle_lines) AS paid, "
        "(SELECT count(*) FROM settle_lines WHERE result = 'won') AS winners, "
        "ARRAY(SELECT batch FROM settle_lines WHERE payout > 0 GROUP BY batch ORDER BY batch) "
        "AS batches, ARRAY(SELECT count(DISTINCT wallet_account_id) FROM settle_lines "
        "WHERE payout > 0 GROUP BY batch ORDER BY batch) AS wallets")).one()
    return {"commitments": int(row.commitments), "paid": int(row.paid),
            "winners": int(row.winners), "batches": [int(b) for b in row.batches],
            "wallets": [int(w) for w in row.wallets]}


def add_staged_lines(conn: Connection, distribution_id: int) -> int:
    """The audit line of every staged commitment, in one INSERT … SELECT."""
    return conn.execute(text(
        "INSERT INTO market_distribution_lines (distribution_id, commitment_id, user_id, "
        "option_id, method, amount, result, share, payout, profit) SELECT :d, commitment_id, "
        "user_id, option_id, method, amount, result, share, payout, profit FROM settle_lines "
        "ORDER BY ord"), {"d": distribution_id}).rowcount


def staged_payouts_sql() -> tuple[str, str]:
    """The ledger transaction of one batch's staged payouts (``:batch``), for
    ``ledger.post_select``: it credits every wallet the batch pays (its payouts in the
    batch summed, in lock order) against the escrow (``:escrow``, last) — what
    ``wallets.apply_changes`` posted for a batch.  Parameters: ``:batch``, ``:escrow``,
    ``:cur``, ``:m``, ``:d``, ``:kind`` (``payout`` or ``refund``).  One batch per call
    keeps ``ledger_post_many``'s arrays at a batch's size (its plans are generic: a
    market's 25,000 wallets at once made its per-account joins quadratic)."""
    transactions = (
        "SELECT 1 AS txn, 'market:' || CAST(:m AS text) || ':distribution:' || CAST(:d AS text) "
        "|| ':batch:' || CAST(:batch AS bigint) AS key, 'market_' || CAST(:kind AS text) AS kind, "
        "'market ' || CAST(:m AS text) || ': ' || CAST(:kind AS text) || 's, batch ' "
        "|| CAST(:batch AS bigint) AS memo, jsonb_build_object('market_id', CAST(:m AS text), "
        "'distribution_id', CAST(:d AS bigint), 'batch', CAST(:batch AS bigint)) AS meta")
    entries = (
        "WITH w AS (SELECT s.wallet_account_id, sum(s.payout) AS amount, min(s.ord) AS ord "
        "FROM settle_lines s WHERE s.payout > 0 AND s.batch = CAST(:batch AS bigint) "
        "GROUP BY s.wallet_account_id) "
        "SELECT 1 AS txn, a.code, CAST(:cur AS text) AS currency, w.amount, w.ord "
        "FROM w JOIN accounts a ON a.id = w.wallet_account_id "
        "UNION ALL SELECT 1, CAST(:escrow AS text), CAST(:cur AS text), -sum(w.amount), "
        "max(w.ord) + 1 FROM w")
    return transactions, entries


#: The wallet audit of the staged payouts (``guard.record_select``): one line per paid
#: commitment, in lock order, with the wallet's balance before it.  The wallets are locked
#: (the payouts are posted), so their balance now less this settlement's payouts to them,
#: plus those before this line, is the balance before this line.
STAGED_AUDIT = (
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


def user_results_sql(*, only_paid: bool) -> str:
    """Per user of a distribution (``:distribution_id``) one row ``recipient, data``:
    commitments, staked, payout, profit and result — for ``uow.emit_select``."""
    return (
        "SELECT l.user_id AS recipient, jsonb_build_object("
        "'market_id', CAST(:market_id AS text), 'distribution_id', CAST(:distribution_id AS bigint), "
        "'currency', CAST(:currency AS text), 'user_id', l.user_id, 'commitments', count(*), "
        "'staked', sum(l.amount), 'payout', sum(l.payout), 'profit', sum(l.payout) - sum(l.amount), "
        "'result', CASE WHEN bool_or(l.result = 'refunded') THEN 'refunded' "
        "WHEN bool_or(l.result = 'won') THEN 'won' ELSE 'lost' END) AS data "
        "FROM market_distribution_lines l WHERE l.distribution_id = :distribution_id"
        + (" AND l.payout > 0" if only_paid else "")
        + " GROUP BY l.user_id ORDER BY l.user_id"
    )


def share_text(share: Fraction) -> str:
    """The exact fraction as a decimal, truncated to SHARE_DIGITS places (integers only)."""
    whole, rest = divmod(share.numerator * 10**SHARE_DIGITS // share.denominator,
                         10**SHARE_DIGITS)
    return f"{whole}.{rest:0{SHARE_DIGITS}d}"


# --- the operator's view (a read connection: the CLI and the console) ----------------------

def disputes(conn: Connection, market_id: str) -> list[dict[str, Any]]:
    d = market_disputes.c
    rows = conn.execute(
        select(d.id, d.distribution_id, d.status, d.reason, d.disputed_by, d.created_at,
               d.ended_by, d.end_note, d.ended_at, d.reresolved_distribution_id,
               d.reresolved_outcome, d.reresolved_at)
        .where(d.market_id == market_id).order_by(d.id)).mappings()
    return [{("dispute_id" if k == "id" else k): (v.isoformat() if hasattr(v, "isoformat") else v)
             for k, v in r.items()} for r in rows]


def show(conn: Connection, market_id: str, line_limit: int | None = None,
         line_offset: int = 0) -> dict[str, Any]:
    """``ballast market show``: the market, its pool and its latest distribution (CONTRACT.md).
    ``line_limit``/``line_offset`` page the audit lines (the console shows a page at a time)."""
    m, c = markets.c, market_commitments.c
    market = conn.execute(select(m.market_id, m.status, m.currency)
                          .where(m.market_id == market_id)).one_or_none()
    if market is None:
        raise NotFound(f"market {market_id} does not exist")
    pool = conn.execute(select(func.coalesce(func.sum(c.amount), 0))
                        .where(c.market_id == market_id)).scalar_one()
    doc: dict[str, Any] = {"market_id": market.market_id, "status": market.status,
                           "pool": int(pool), "distribution": None}
    dist = conn.execute(
        select(_DIST.id, _DIST.status, _DIST.house_fee, _DIST.creator_fee, _DIST.breakage,
               _DIST.failure, _DIST.retries, _DIST.retried_by)
        .where(_DIST.market_id == market_id).order_by(_DIST.id.desc()).limit(1)).one_or_none()
    if dist is not None:
        ln = market_distribution_lines.c
        lines = conn.execute(
            select(ln.commitment_id, ln.user_id, ln.option_id, ln.amount, ln.payout, ln.profit,
                   ln.method).where(ln.distribution_id == dist.id).order_by(ln.commitment_id)
            .limit(line_limit).offset(line_offset)).mappings()
        doc["distribution"] = {
            "status": dist.status,
            "house_fee": _int(dist.house_fee),
            "creator_fee": _int(dist.creator_fee),
            "breakage": _int(dist.breakage),
            "distribution_id": dist.id,
            "failure": dist.failure,
            "retries": int(dist.retries),
            "retried_by": dist.retried_by,
            "lines": [{k: (int(v) if k in ("amount", "payout", "profit") else v)
                       for k, v in row.items()} for row in lines],
        }
    history = disputes(conn, market_id)
    doc["dispute"] = history[-1] if history else None
    doc["disputes"] = len(history)
    return doc


def currency(conn: Connection, market_id: str) -> str:
    return conn.execute(select(markets.c.currency).where(markets.c.market_id == market_id)
                        ).scalar_one()


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
