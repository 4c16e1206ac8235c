"""Markets on PostgreSQL: markets, commitments, distributions and their audit lines.

Every function takes the unit of work's open ``Connection``; nothing here commits.
Everything that changes a market locks its row first (``lock="update"``), so
resolutions, settlements and rollbacks of one market are serialised; a
commitment takes the row ``FOR SHARE`` so commitments do not wait on each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal, Sequence

from sqlalchemy import Connection, text

from domain.errors import NotFound
from domain.markets import (
    COMMITMENT,
    COMPLETED,
    DISPUTE,
    DISTRIBUTION,
    FAILED,
    MARKET,
    PENDING,
    ROLLED_BACK,
    Commitment,
    Market,
    Terms,
)

#: Digits kept of a line's share (an exact fraction in the domain) for the audit.
SHARE_DIGITS = 18


@dataclass(frozen=True, slots=True)
class DistributionRow:
    id: int
    market_id: str
    kind: str
    winning_option_id: str | None
    status: str
    requested_by: str
    reason: str | None


def get_market(conn: Connection, market_id: str,
               lock: Literal["share", "update"] | None = None) -> Market:
    """The market, optionally locked; NotFound when it does not exist."""
    suffix = {"share": " FOR SHARE", "update": " FOR UPDATE", None: ""}[lock]
    row = conn.execute(
        text("SELECT market_id, kind, currency, creator_id, creator_fee_bps, house_fee_bps, status "
             "FROM markets WHERE market_id = :m" + suffix),
        {"m": market_id},
    ).one_or_none()
    if row is None:
        raise NotFound(f"market {market_id} does not exist")
    options = tuple(conn.execute(
        text("SELECT option_id FROM market_options WHERE market_id = :m ORDER BY ordinal"),
        {"m": market_id},
    ).scalars())
    return Market(row.market_id, row.kind, options, row.currency, row.creator_id,
                  row.creator_fee_bps, row.house_fee_bps, row.status)


def definition(conn: Connection, market_id: str) -> dict[str, Any] | None:
    """What ``open_market`` said about the market (to recognise a resend), or None."""
    row = conn.execute(
        text("SELECT market_id, title, kind, currency, creator_id, creator_fee_bps, house_fee_bps "
             "FROM markets WHERE market_id = :m"),
        {"m": market_id},
    ).mappings().one_or_none()
    if row is None:
        return None
    options = [dict(r) for r in conn.execute(
        text("SELECT option_id, label FROM market_options WHERE market_id = :m ORDER BY ordinal"),
        {"m": market_id},
    ).mappings()]
    return {**row, "options": options}


def add_market(conn: Connection, market: Market, title: str, labels: Sequence[str]) -> None:
    conn.execute(
        text("INSERT INTO markets (market_id, title, kind, currency, creator_id, creator_fee_bps, "
             "house_fee_bps, status) VALUES (:m, :t, :k, :c, :cr, :cf, :hf, :s)"),
        {"m": market.market_id, "t": title, "k": market.kind, "c": market.currency,
         "cr": market.creator_id, "cf": market.creator_fee_bps, "hf": market.house_fee_bps,
         "s": market.status},
    )
    conn.execute(
        text("INSERT INTO market_options (market_id, option_id, label, ordinal) "
             "SELECT :m, o, l, n FROM unnest(CAST(:opts AS text[]), CAST(:labels AS text[])) "
             "WITH ORDINALITY AS x(o, l, n)"),
        {"m": market.market_id, "opts": list(market.options), "labels": list(labels)},
    )


def set_status(conn: Connection, market_id: str, status: str) -> None:
    """Move the market to ``status``, from a status its lifecycle allows (else refused)."""
    moved = conn.execute(
        text("UPDATE markets SET status = :s, updated_at = now() "
             "WHERE market_id = :m AND status = ANY(:from) RETURNING 1"),
        {"s": status, "m": market_id, "from": list(MARKET.sources(status))}).first()
    if moved is None:
        _refuse(conn, MARKET, "SELECT status FROM markets WHERE market_id = :k", market_id, status)


def _refuse(conn: Connection, lifecycle, select: str, key, new: str) -> None:
    """A guarded UPDATE moved nothing: say why (the lifecycle's one-line refusal)."""
    current = conn.execute(text(select), {"k": key}).scalar_one_or_none()
    if current is None:
        raise NotFound(f"no {lifecycle.entity} {key}")
    lifecycle.check(current, new)


# --- commitments ------------------------------------------------------------------------

def find_commitment(conn: Connection, commitment_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        text("SELECT commitment_id, market_id, user_id, option_id, position, method, amount, status "
             "FROM market_commitments WHERE commitment_id = :c"),
        {"c": commitment_id},
    ).mappings().one_or_none()
    return dict(row) if row else None


def add_commitment(conn: Connection, market_id: str, c: Commitment, position: str | None,
                   wallet_code: str, transaction_id: int) -> None:
    conn.execute(
        text("INSERT INTO market_commitments (commitment_id, market_id, user_id, option_id, "
             "position, method, amount, wallet_account_id, transaction_id) "
             "SELECT :c, :m, :u, :o, :p, :method, :a, a.id, :t FROM accounts a WHERE a.code = :w"),
        {"c": c.commitment_id, "m": market_id, "u": c.user_id, "o": c.option_id, "p": position,
         "method": c.method, "a": c.amount, "w": wallet_code, "t": transaction_id},
    )


def option_totals(conn: Connection, market_id: str) -> dict[str, int]:
    """Σ of the active commitments per option (options nobody backed are absent)."""
    return {r.option_id: int(r.total) for r in conn.execute(
        text("SELECT option_id, sum(amount) AS total FROM market_commitments "
             "WHERE market_id = :m AND status = 'active' GROUP BY option_id"),
        {"m": market_id},
    )}


def set_commitments_status(conn: Connection, market_id: str, old: str, new: str) -> int:
    COMMITMENT.check(old, new)
    return conn.execute(
        text("UPDATE market_commitments SET status = :new WHERE market_id = :m AND status = :old"),
        {"m": market_id, "old": old, "new": new},
    ).rowcount


# --- distributions ----------------------------------------------------------------------

_DIST_COLUMNS = "id, market_id, kind, winning_option_id, status, requested_by, reason"


def add_distribution(conn: Connection, market_id: str, winning_option_id: str | None,
                     requested_by: str, reason: str | None) -> int:
    return conn.execute(
        text("INSERT INTO market_distributions (market_id, kind, winning_option_id, requested_by, "
             "reason) VALUES (:m, :k, :w, :by, :r) RETURNING id"),
        {"m": market_id, "k": "void" if winning_option_id is None else "resolved",
         "w": winning_option_id, "by": requested_by, "r": reason},
    ).scalar_one()


def get_distribution(conn: Connection, distribution_id: int, *, lock: bool = False) -> DistributionRow:
    row = conn.execute(
        text(f"SELECT {_DIST_COLUMNS} FROM market_distributions WHERE id = :d"
             + (" FOR UPDATE" if lock else "")),
        {"d": distribution_id},
    ).one_or_none()
    if row is None:
        raise NotFound(f"distribution {distribution_id} does not exist")
    return DistributionRow(*row)


def latest_distribution(conn: Connection, market_id: str, *, lock: bool = False) -> DistributionRow | None:
    row = conn.execute(
        text(f"SELECT {_DIST_COLUMNS} FROM market_distributions WHERE market_id = :m "
             "ORDER BY id DESC LIMIT 1" + (" FOR UPDATE" if lock else "")),
        {"m": market_id},
    ).one_or_none()
    return DistributionRow(*row) if row else None


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


#: The staged lines of the settlement in progress (a temporary table, dropped at commit).
STAGE = "settle_lines"


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


def add_transactions(conn: Connection, distribution_id: int, transaction_ids: Sequence[int],
                     purpose: str) -> None:
    conn.execute(
        text("INSERT INTO market_distribution_transactions (transaction_id, distribution_id, "
             "purpose) SELECT t, :d, :p FROM unnest(CAST(:t AS bigint[])) AS x(t)"),
        {"t": list(transaction_ids), "d": distribution_id, "p": purpose},
    )


def drop_stage(conn: Connection) -> None:
    conn.execute(text(f"DROP TABLE IF EXISTS pg_temp.{STAGE}"))


def share_text(share: Fraction) -> str:
    """The exact fraction as a decimal, truncated to SHARE_DIGITS places (integers only)."""
    whole, rest = divmod(share.numerator * 10**SHARE_DIGITS // share.denominator,
                         10**SHARE_DIGITS)
    return f"{whole}.{rest:0{SHARE_DIGITS}d}"


def complete_distribution(conn: Connection, distribution_id: int, t: Terms, breakage: int,
                          paid: int, commitments: int, winners: int) -> None:
    moved = conn.execute(
        text("UPDATE market_distributions SET status = 'completed', kind = :k, pool = :pool, "
             "house_fee = :hf, creator_fee = :cf, winner_pool = :wp, winning_total = :wt, "
             "breakage = :b, paid = :paid, commitments = :n, winners = :w, completed_at = now() "
             "WHERE id = :d AND status = ANY(:from) RETURNING 1"),
        {"k": t.kind, "pool": t.pool, "hf": t.house_fee, "cf": t.creator_fee, "wp": t.winner_pool,
         "wt": t.winning_total, "b": breakage, "paid": paid, "n": commitments, "w": winners,
         "d": distribution_id, "from": list(DISTRIBUTION.sources(COMPLETED))},
    ).first()
    if moved is None:
        _refuse(conn, DISTRIBUTION, _DIST_STATUS, distribution_id, COMPLETED)


def fail_distribution(conn: Connection, distribution_id: int, failure: str) -> None:
    conn.execute(
        text("UPDATE market_distributions SET status = :s, failure = :f WHERE id = :d "
             "AND status = ANY(:from)"),
        {"f": failure[:500], "d": distribution_id, "s": FAILED,
         "from": list(DISTRIBUTION.sources(FAILED))},
    )


def roll_back_distribution(conn: Connection, distribution_id: int, by: str, reason: str) -> None:
    moved = conn.execute(
        text("UPDATE market_distributions SET status = :s, rolled_back_at = now(), "
             "rolled_back_by = :by, rollback_reason = :r WHERE id = :d AND status = ANY(:from) "
             "RETURNING 1"),
        {"by": by, "r": reason, "d": distribution_id, "s": ROLLED_BACK,
         "from": list(DISTRIBUTION.sources(ROLLED_BACK))},
    ).first()
    if moved is None:
        _refuse(conn, DISTRIBUTION, _DIST_STATUS, distribution_id, ROLLED_BACK)


_DIST_STATUS = "SELECT status FROM market_distributions WHERE id = :k"


def add_transaction(conn: Connection, distribution_id: int, transaction_id: int, purpose: str) -> None:
    conn.execute(
        text("INSERT INTO market_distribution_transactions (transaction_id, distribution_id, purpose) "
             "VALUES (:t, :d, :p)"),
        {"t": transaction_id, "d": distribution_id, "p": purpose},
    )


def transactions_of(conn: Connection, distribution_id: int) -> list[tuple[int, str]]:
    """The ledger transactions a distribution posted (not yet reversed), newest first."""
    return [(r.transaction_id, r.purpose) for r in conn.execute(
        text("SELECT transaction_id, purpose FROM market_distribution_transactions "
             "WHERE distribution_id = :d AND reversal_id IS NULL ORDER BY transaction_id DESC"),
        {"d": distribution_id},
    )]


def set_reversal(conn: Connection, transaction_id: int, reversal_id: int) -> None:
    conn.execute(
        text("UPDATE market_distribution_transactions SET reversal_id = :r WHERE transaction_id = :t"),
        {"r": reversal_id, "t": transaction_id},
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


def retry_distribution(conn: Connection, distribution_id: int, by: str) -> int:
    """failed → pending again (its settlement is retried); returns the retry's number."""
    return int(conn.execute(
        text("UPDATE market_distributions SET status = :s, retries = retries + 1, "
             "retried_by = :by, retried_at = now() WHERE id = :d AND status = ANY(:from) "
             "RETURNING retries"),
        {"by": by, "d": distribution_id, "s": PENDING, "from": list(DISTRIBUTION.sources(PENDING))},
    ).scalar_one())


def distribution_kind(conn: Connection, distribution_id: int) -> str:
    return conn.execute(text("SELECT kind FROM market_distributions WHERE id = :d"),
                        {"d": distribution_id}).scalar_one()


# --- disputes -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DisputeRow:
    id: int
    market_id: str
    distribution_id: int
    status: str


def open_dispute(conn: Connection, market_id: str) -> DisputeRow | None:
    row = conn.execute(
        text("SELECT id, market_id, distribution_id, status FROM market_disputes "
             "WHERE market_id = :m AND status = 'open' FOR UPDATE"),
        {"m": market_id},
    ).one_or_none()
    return DisputeRow(*row) if row else None


def add_dispute(conn: Connection, market_id: str, distribution_id: int, reason: str, by: str) -> int:
    """The partial unique index refuses a second open dispute of a market."""
    return conn.execute(
        text("INSERT INTO market_disputes (market_id, distribution_id, reason, disputed_by) "
             "VALUES (:m, :d, :r, :by) RETURNING id"),
        {"m": market_id, "d": distribution_id, "r": reason, "by": by},
    ).scalar_one()


def end_dispute(conn: Connection, dispute_id: int, status: str, by: str, note: str | None) -> None:
    conn.execute(
        text("UPDATE market_disputes SET status = :s, ended_by = :by, end_note = :n, "
             "ended_at = now() WHERE id = :id AND status = ANY(:from)"),
        {"s": status, "by": by, "n": note, "id": dispute_id, "from": list(DISPUTE.sources(status))},
    )


def record_reresolution(conn: Connection, market_id: str, distribution_id: int,
                        outcome: str) -> int | None:
    """A market re-resolved after a rolled-back dispute: the dispute records the new outcome.
    Returns the dispute's id (None when no rolled-back dispute awaited a re-resolution)."""
    return conn.execute(
        text("UPDATE market_disputes SET reresolved_distribution_id = :d, reresolved_outcome = :o, "
             "reresolved_at = now() WHERE id = (SELECT id FROM market_disputes WHERE market_id = :m "
             "AND status = 'rolled_back' AND reresolved_distribution_id IS NULL "
             "ORDER BY id DESC LIMIT 1) RETURNING id"),
        {"m": market_id, "d": distribution_id, "o": outcome},
    ).scalar_one_or_none()


def disputes(conn: Connection, market_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        text("SELECT id, distribution_id, status, reason, disputed_by, created_at, ended_by, "
             "end_note, ended_at, reresolved_distribution_id, reresolved_outcome, reresolved_at "
             "FROM market_disputes WHERE market_id = :m ORDER BY id"),
        {"m": market_id},
    ).mappings()
    return [{("dispute_id" if k == "id" else k): (v.isoformat() if hasattr(v, "isoformat") else v)
             for k, v in r.items()} for r in rows]


# --- the operator's view ------------------------------------------------------------------

def show(conn: Connection, market_id: str, line_limit: int | None = None,
         line_offset: int = 0) -> dict[str, Any]:
    """``ballast market show``: the market, its pool and its latest distribution (CONTRACT.md).
    ``line_limit``/``line_offset`` page the audit lines (the console shows a page at a time)."""
    market = conn.execute(
        text("SELECT market_id, status, currency FROM markets WHERE market_id = :m"), {"m": market_id}
    ).one_or_none()
    if market is None:
        raise NotFound(f"market {market_id} does not exist")
    pool = conn.execute(
        text("SELECT COALESCE(sum(amount), 0) FROM market_commitments WHERE market_id = :m"),
        {"m": market_id},
    ).scalar_one()
    doc: dict[str, Any] = {"market_id": market.market_id, "status": market.status,
                           "pool": int(pool), "distribution": None}
    dist = conn.execute(
        text("SELECT id, status, house_fee, creator_fee, breakage, failure, retries, retried_by "
             "FROM market_distributions WHERE market_id = :m ORDER BY id DESC LIMIT 1"),
        {"m": market_id},
    ).one_or_none()
    if dist is not None:
        lines = conn.execute(
            text("SELECT commitment_id, user_id, option_id, amount, payout, profit, method "
                 "FROM market_distribution_lines WHERE distribution_id = :d "
                 "ORDER BY commitment_id LIMIT :n OFFSET :off"),
            {"d": dist.id, "n": line_limit, "off": line_offset},
        ).mappings()
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
                       for k, v in ln.items()} for ln in lines],
        }
    history = disputes(conn, market_id)
    doc["dispute"] = history[-1] if history else None
    doc["disputes"] = len(history)
    return doc


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
