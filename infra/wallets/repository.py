"""The wallets and the balance guard on PostgreSQL, as the unit of work hands them out.

``uow.wallets`` (``WalletRepository``): the wallet accounts locked with what the guard needs
of them, the posting written with its audit trail, events and alerts in one statement, the
audit trail of a posted transaction.  ``uow.guard`` (``GuardRepository``): tiers, limits,
the trailing-window sums, the balance alerts of a transaction's wallets, a refusal told in a
transaction of its own.  The rules are ``domain.guard``'s and ``domain.wallet``'s; the
statements that run one (the window sums) take the domain's values as bound parameters.
The in-memory twins are in ``infra/uow_fake.py``.

Ordinary reads and writes use the Core tables (``infra/db/tables.py``); ``text()``/``sql()``
only for the named set-based or hot-path statements (``wallet_lock_context``, the
one-statement posting, the audit INSERT … SELECT, the window sums, the chunk of a big
transaction's wallets).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

from sqlalchemy import Connection, DateTime, cast, func, select, text
from sqlalchemy.dialects.postgresql import insert

from domain import accounts
from domain import guard as rules
from domain.errors import InvalidCommand
from domain.ledger import Posting, PostingBatchItem
from domain.guard import (BALANCE_ALERT_KINDS, DAILY_WINDOW, DEFAULT_TIER, EXPIRING_ALERT_KINDS,
                          RISK_LARGE, RISK_NEGATIVE, RISK_TIER, RISK_VERY_LARGE, WEEKLY_WINDOW,
                          AlertSpec, GuardContext, LimitTable, Limits, Paired, Usage)
from domain.wallet import WalletChange
from domain import request_ids
from infra import alerts, ledger, outbox
from infra.alerts import Alert
from infra.db import tables as t
from infra.db.engine import fetch, pg_array, sql
from infra.transaction import Transaction

#: Up to this many wallets, the accounts are locked and the guard's context (tiers, limits,
#: window sums, open balance alerts) read in one statement (``wallet_lock_context``), and
#: the posting written with its audit trail in one more; a bigger batch (a settlement)
#: reads and writes set-wise.
CONTEXT_WALLETS = 100

#: Up to this many wallets in one transaction get their balance alerts inline; a bigger
#: (system) batch hands them to the ``evaluate_balance_alerts`` step, in chunks, so a
#: 100,000-payout settlement is not held up by alert bookkeeping.
INLINE_ALERT_WALLETS = 100
ALERT_CHUNK_WALLETS = 5_000

Events = Sequence[tuple[str, dict[str, Any], str | None]]

_KINDS_ARRAY = pg_array(BALANCE_ALERT_KINDS)
# Migration 0017: the trailing windows are the domain's, bound (``:day``, ``:week``).
_LOCK_CONTEXT = (
    "SELECT * FROM wallet_lock_context(CAST(:codes AS text[]), CAST(:curs AS text[]), "
    "CAST(:negs AS boolean[]), CAST(:sharded AS boolean[]), CAST(:users AS text[]), "
    "CAST(:wcurs AS text[]), CAST(:mine AS boolean[]), CAST(:kinds AS text[]), "
    "CAST(:default AS text), CAST(:now AS timestamptz), CAST(:day AS interval), "
    "CAST(:week AS interval))"
)

_USAGE = text(
    "WITH t AS (SELECT COALESCE(CAST(:now AS timestamptz), now()) AS now) "
    "SELECT a.user_id, a.currency, "
    "COALESCE(sum(abs(a.amount)) FILTER (WHERE a.created_at > t.now - CAST(:day AS interval)), 0) AS daily, "
    "COALESCE(sum(abs(a.amount)), 0) AS weekly "
    "FROM unnest(CAST(:users AS text[]), CAST(:curs AS text[])) AS w(user_id, currency) "
    "CROSS JOIN t JOIN wallet_audit a ON a.user_id = w.user_id AND a.currency = w.currency "
    "AND a.user_initiated AND a.created_at > t.now - CAST(:week AS interval) "
    "GROUP BY a.user_id, a.currency"
)

#: The next chunk of a big transaction's wallets, keyset-paged in byte order ("C"), their
#: accounts locked in id order (as the ledger locks).
_CHUNK = text(
    "SELECT w.user_id, w.currency, w.first_before, a.balance FROM ("
    "  SELECT user_id, currency, (array_agg(balance_before ORDER BY id))[1] AS first_before "
    "  FROM wallet_audit WHERE transaction_id = :txn "
    "  AND (CAST(:u AS text) IS NULL OR (user_id COLLATE \"C\", currency COLLATE \"C\") > (:u, :c)) "
    "  GROUP BY user_id, currency ORDER BY user_id COLLATE \"C\", currency COLLATE \"C\" "
    "  LIMIT :n) w "
    "JOIN accounts a ON a.code = CAST(:user_prefix AS text) || w.user_id || ':' || w.currency "
    "ORDER BY a.id FOR UPDATE OF a"
)


def _audit_rows(changes: Paired, tiers: dict[str, str]) -> list[dict[str, Any]]:
    """The audit lines of ``changes`` for ``_audit_sql``'s JSON."""
    rows = []
    for c, before in changes:
        tier = tiers.get(c.user_id, DEFAULT_TIER)
        rows.append({"u": c.user_id, "c": c.currency, "k": c.kind, "ui": c.user_initiated,
                     "a": c.amount, "b": before, "r": c.reason or None, "p": c.performed_by,
                     "m": c.metadata or None, "rs": rules.risk_score(before, c.amount, tier),
                     "t": tier})
    return rows


def _audit_sql(txn: str, join: str = "") -> str:
    """The audit lines' INSERT from the JSON ``:rows``; ``txn``: the SQL of their ledger
    transaction id (``:txn``, or a column of a relation ``join`` brings in, matched on a
    row's ``n``)."""
    # One JSON document rather than eleven arrays: far cheaper to bind for 100,000 rows.
    return ("INSERT INTO wallet_audit (transaction_id, user_id, currency, kind, user_initiated, "
            "amount, balance_before, balance_after, reason, performed_by, metadata, risk_score, tier) "
            f"SELECT {txn}, x.u, x.c, x.k, x.ui, x.a, x.b, x.b + x.a, x.r, x.p, x.m, x.rs, x.t "
            "FROM json_to_recordset(CAST(:rows AS json)) AS x(u text, c text, k text, "
            f"ui boolean, a bigint, b bigint, r text, p text, m jsonb, rs smallint, t text, n int){join}")


def _context_of_rows(rows) -> GuardContext:
    """The guard's context from ``wallet_lock_context``'s wallet rows."""
    tiers: dict[str, str] = {}
    limits: dict[tuple[str, str], Limits] = {}
    used: dict[tuple[str, str], Usage] = {}
    open_alerts: dict[str, int | None] = {}
    for r in rows:
        if r.stored_tier is not None:
            tiers[r.user_id] = r.stored_tier
        if r.min_balance is not None:
            limits[(r.tier, r.currency)] = Limits(r.tier, r.currency, r.min_balance,
                                                  r.max_balance, r.daily_limit, r.weekly_limit,
                                                  r.warning_threshold, r.critical_threshold)
        if r.daily is not None:
            used[(r.user_id, r.currency)] = Usage(int(r.daily), int(r.weekly))
        for key, drop_before in zip(r.alert_keys or [], r.alert_befores or []):
            open_alerts[key] = None if drop_before is None else int(drop_before)
    return GuardContext(tiers, LimitTable(limits), used, open_alerts)


def _publish(unit, rows: list) -> None:
    if rows and hasattr(unit, "publish_after_commit"):
        unit.publish_after_commit(rows)  # (an OutboxOnly unit leaves them to the sweeper)


@dataclass(frozen=True, slots=True)
class WalletPosting:
    """One ledger transaction of wallet changes for ``post_and_record_many``: the changes
    with their balances before, its postings, the balance alerts it raises, its events."""

    changes: Paired
    postings: Sequence[Posting]
    raised: Sequence[AlertSpec]
    events: Events
    kind: str
    memo: str | None = None
    metadata: dict[str, Any] | None = None


class WalletRepository:
    """The wallet side of a wallet change.

    Parameters:
      unit: the unit of work (its connection; events and alerts go through it).
      guard: the unit of work's ``GuardRepository`` (the balance alerts of ``record``).
    """

    def __init__(self, unit, guard: "GuardRepository") -> None:
        self.unit = unit
        self.guard = guard

    @property
    def conn(self) -> Connection:
        return self.unit.conn

    def lock(self, wanted: dict[str, str], changes: Sequence[WalletChange], *,
             with_context: bool, now: datetime | None = None
             ) -> tuple[dict[str, int], GuardContext | None]:
        """Open the accounts of ``wanted`` (code -> currency) that do not exist, lock them in
        id order and return their balances.  ``with_context``: and read, once the locks are
        granted, what the guard needs of ``changes``' wallets, in the same statement
        (``wallet_lock_context``): what a statement of its own after the locks would read."""
        if not with_context:
            locked = ledger.open_and_lock_accounts(self.conn, wanted)
            return {code: acc.balance for code, acc in locked.items()}, None
        wallets = sorted({(c.user_id, c.currency) for c in changes})
        initiated = {(c.user_id, c.currency) for c in changes if c.user_initiated}
        rows = fetch(self.conn, _LOCK_CONTEXT, {
            **ledger.account_arrays(wanted),
            "now": now, "users": pg_array([u for u, _ in wallets]),
            "wcurs": pg_array([c for _, c in wallets]),
            "mine": pg_array([w in initiated for w in wallets]), "kinds": _KINDS_ARRAY,
            "default": DEFAULT_TIER, "day": DAILY_WINDOW, "week": WEEKLY_WINDOW,
        })
        balances = {r.code: int(r.balance) for r in rows if r.what == "account"}
        return balances, _context_of_rows([r for r in rows if r.what == "wallet"])

    def lock_balances(self, codes) -> dict[str, int]:
        """Lock existing accounts in id order and return their balances."""
        return {code: a.balance for code, a in ledger.lock_accounts(self.conn, codes).items()}

    def post_and_record_many(self, items: Sequence["WalletPosting"],
                             tiers: dict[str, str]) -> list[int]:
        """The postings (one ``ledger_post_many`` call, a ledger transaction per item), the
        audit lines, the events and the raised alerts of every item in one statement, each
        written only once the postings are (a refusal writes nothing and is raised as
        ``ledger.post`` raises it).  Every event's and alert's ``transaction_id`` is its
        item's transaction's (in the database and in the dicts).  Returns the transaction
        ids in order.  For a posting with an idempotency key (a repeat must give the earlier
        transaction), use ``ledger.post`` then ``record``."""
        conn = self.conn
        posting = ledger.prepare_post_many([PostingBatchItem(list(i.postings), i.kind, None, i.memo,
                                                             i.metadata) for i in items])
        audit: list[dict[str, Any]] = []
        events: list[tuple[str, dict[str, Any], str | None]] = []
        events_of: list[int] = []
        raised: dict[str, tuple[Alert, int]] = {}  # by key: distinct across the items
        for n, item in enumerate(items, start=1):
            audit += [{**row, "n": n} for row in _audit_rows(item.changes, tiers)]
            events += item.events
            events_of += [n] * len(item.events)
            for a in alerts.distinct(Alert(*a) for a in item.raised):
                raised[a.dedupe_key] = (a, n)
        opened = [a for a, _ in raised.values()]
        parts = [f"p AS ({posting.sql})",
                 "txn AS (SELECT t.id, t.n FROM p CROSS JOIN unnest(p.ids) WITH ORDINALITY "
                 "AS t(id, n) WHERE p.status = 'posted')",
                 f"aud AS ({_audit_sql('txn.id', join=' JOIN txn ON txn.n = x.n')})"]
        params: dict[str, Any] = {**posting.params, "rows": json.dumps(audit, default=str)}
        outputs = ["p.*"]
        bodies: list[dict[str, Any]] = []
        if events:
            ev_sql, ev_params, bodies = outbox.events_statement(events, "txn", events_of)
            parts.append(f"ev AS ({ev_sql})")
            params.update(ev_params)
            outputs += ["(SELECT array_agg(id) FROM ev) AS ev_ids",
                        "(SELECT array_agg(key) FROM ev) AS ev_keys"]
        if opened:
            al_sql, al_params = alerts.upsert_statement(opened, "txn",
                                                        [n for _, n in raised.values()])
            parts.append(f"al AS ({al_sql})")
            params.update(al_params)
            outputs += ["(SELECT array_agg(key) FILTER (WHERE inserted) FROM al) AS al_new_keys",
                        "(SELECT array_agg(id) FILTER (WHERE inserted) FROM al) AS al_new_ids"]
        (row,) = fetch(conn, f"WITH {', '.join(parts)} SELECT {', '.join(outputs)} FROM p", params)
        txn_ids = posting.outcome(conn, row)  # raises on a refusal (nothing was written)
        for b, n in zip(bodies, events_of):
            b["data"]["transaction_id"] = txn_ids[n - 1]
        for a, n in raised.values():
            a.data["transaction_id"] = txn_ids[n - 1]
        if bodies:
            _publish(self.unit, outbox.rows_of(bodies, dict(zip(row.ev_keys or [],
                                                                row.ev_ids or []))))
        if opened:
            alerts.announce_raised(self.unit, opened,
                                   dict(zip(row.al_new_keys or [], row.al_new_ids or [])))
        return txn_ids

    def record(self, changes: Paired, txn_id: int, *, context: GuardContext | None = None,
               events: Events = ()) -> None:
        """Audit trail and balance alerts for every change of a posted transaction (system
        ones included), and the caller's ``events``.

        One INSERT for the audit lines, whatever the number of changes; the balance alerts
        inline for a few wallets, else handed to ``evaluate_balance_alerts``.  With a
        ``context`` (``lock(with_context=True)``) the audit lines, the events and the alerts
        raised or refreshed are written in one statement."""
        if not changes:
            return
        tiers = (context.tiers if context is not None
                 else self.guard.tiers_of(list({c.user_id for c, _ in changes})))
        moves = rules.wallet_moves(changes)
        params = {"txn": txn_id, "rows": json.dumps(_audit_rows(changes, tiers), default=str)}
        if context is not None and len(moves) <= INLINE_ALERT_WALLETS:
            self._record_at_once(params, moves, txn_id, context, events)
            return
        self.conn.execute(text(_audit_sql(":txn")), params)
        if events:
            self.unit.emit_many(list(events))
        if len(moves) <= INLINE_ALERT_WALLETS:
            self.guard.refresh_balance_alerts(tiers, moves, txn_id)
        else:
            self.unit.send("evaluate_balance_alerts", request_id=request_ids.next_step("balance-alerts", txn_id, 0),
                           transaction_id=txn_id)

    def _record_at_once(self, params: dict[str, Any],
                        moves: dict[tuple[str, str], tuple[int, int]], txn_id: int,
                        context: GuardContext, events: Events) -> None:
        """Audit lines, events and the alerts to raise or refresh in one statement (CTEs);
        alerts to resolve (and a new alert's announcement) in their own, only when there are."""
        raised, resolve = rules.alert_decisions(context, moves, txn_id, datetime.now(timezone.utc))
        items = alerts.distinct(Alert(*a) for a in raised)
        parts, selects = [f"aud AS ({_audit_sql(':txn')})"], []
        bodies: list[dict[str, Any]] = []
        if events:
            ev_sql, ev_params, bodies = outbox.events_statement(list(events))
            parts.append(f"ev AS ({ev_sql})")
            params = {**params, **ev_params}
            selects.append("SELECT 'ev' AS what, id, key, NULL::boolean AS inserted FROM ev")
        if items:
            al_sql, al_params = alerts.upsert_statement(items)
            parts.append(f"al AS ({al_sql})")
            params = {**params, **al_params}
            selects.append("SELECT 'al' AS what, id, key, inserted FROM al")
        if not selects:
            selects.append("SELECT NULL::text AS what, NULL::bigint AS id, NULL::text AS key, "
                           "NULL::boolean AS inserted WHERE false")
        got = self.conn.execute(sql(f"WITH {', '.join(parts)} {' UNION ALL '.join(selects)}"),
                                params).all()
        if bodies:
            _publish(self.unit, outbox.rows_of(bodies, {r.key: r.id for r in got if r.what == "ev"}))
        alerts.announce_raised(self.unit, items,
                               {r.key: r.id for r in got if r.what == "al" and r.inserted})
        self.guard.resolve_open(context, resolve)


class GuardRepository:
    """Tiers, limits, trailing windows and balance alerts.

    Parameters:
      unit: the unit of work (its connection, engine and broker; alerts go through it).
    """

    def __init__(self, unit) -> None:
        self.unit = unit

    @property
    def conn(self) -> Connection:
        return self.unit.conn

    # --- tiers and limits

    def tiers_of(self, user_ids: Sequence[str]) -> dict[str, str]:
        return tiers_of(self.conn, user_ids)

    def tier(self, user_id: str, *, lock: bool = False) -> str:
        """The user's tier (bronze until set); ``lock``: FOR UPDATE (a tier change)."""
        query = select(t.user_tiers.c.tier).where(t.user_tiers.c.user_id == user_id)
        if lock:
            query = query.with_for_update()
        return self.conn.execute(query).scalar_one_or_none() or DEFAULT_TIER

    def store_tier(self, user_id: str, tier: str, previous: str,
                   request_id: str | None) -> None:
        """The user's new tier, and the change in ``tier_changes``."""
        upsert = insert(t.user_tiers).values(user_id=user_id, tier=tier)
        self.conn.execute(upsert.on_conflict_do_update(
            index_elements=[t.user_tiers.c.user_id],
            set_={"tier": upsert.excluded.tier, "updated_at": func.now()}))
        self.conn.execute(t.tier_changes.insert().values(
            user_id=user_id, previous_tier=previous, tier=tier, request_id=request_id))

    def limits(self) -> LimitTable:
        return load_limits(self.conn)

    def set_limits(self, limits: Limits, by: str) -> Limits:
        return set_limits(self.conn, limits, by)

    def usage(self, wallets: Sequence[tuple[str, str]],
              now: datetime | None = None) -> dict[tuple[str, str], Usage]:
        return usage(self.conn, wallets, now)

    def context(self, changes: Paired, now: datetime | None = None) -> GuardContext:
        """What ``domain.guard.check`` needs of ``changes``' wallets, read set-wise (tiers,
        limits, window sums: three statements, however many wallets)."""
        wallets = sorted({(c.user_id, c.currency) for c, _ in changes})
        return GuardContext(self.tiers_of(sorted({u for u, _ in wallets})), self.limits(),
                            self.usage(wallets, now), {})

    # --- balance alerts

    def resolve_open(self, context: GuardContext, keys: Sequence[str]) -> None:
        """Resolve those of ``keys`` that ``context`` read as open."""
        alerts.resolve_alerts(self.unit, [k for k in keys if k in context.open_alerts],
                              note="balance back within limits")

    def refresh_balance_alerts(self, tiers: dict[str, str],
                               moves: dict[tuple[str, str], tuple[int, int]],
                               txn_id: int) -> None:
        """Raise the balance alerts that hold for each wallet (``(user, currency) ->
        (balance before, balance after)``), resolve those that no longer do
        (``domain.guard.alert_decisions``)."""
        recovering = [rules.alert_key("significant_drop", u, c)
                      for (u, c), (before, after) in moves.items() if after > before]
        context = GuardContext(tiers, self.limits(), {}, self._open_drops(recovering))
        raised, resolve = rules.alert_decisions(context, moves, txn_id, datetime.now(timezone.utc))
        alerts.resolve_alerts(self.unit, self._open_among(resolve),
                              note="balance back within limits")
        alerts.raise_alerts(self.unit, [Alert(*a) for a in raised])

    def _open_drops(self, keys: list[str]) -> dict[str, int | None]:
        """The open significant drops among ``keys``: key -> balance before the drop."""
        if not keys:
            return {}
        a = t.alerts.c
        rows = self.conn.execute(
            select(a.dedupe_key, a.data["balance_before"].astext.label("before"))
            .where(a.dedupe_key == t.any_text("k", keys), a.status != "resolved",
                   a.kind == "significant_drop"))
        return {r.dedupe_key: None if r.before is None else int(r.before) for r in rows}

    def _open_among(self, keys: list[str]) -> list[str]:
        """The keys (of many) that have an open alert: one lookup against the open alerts."""
        if not keys:
            return []
        a = t.alerts.c
        return list(self.conn.execute(
            select(a.dedupe_key).where(a.dedupe_key == t.any_text("k", keys),
                                       a.status != "resolved")).scalars())

    def alerts_of_chunk(self, txn_id: int, after: tuple[str, str] | None = None,
                        limit: int = ALERT_CHUNK_WALLETS) -> tuple[str, str] | None:
        """Balance alerts of the next ``limit`` wallets of a big transaction, by current
        balance.  The chunk's wallets are locked (id order, as the ledger does) so no change
        slips between reading a balance and raising its alert.  Returns the last wallet
        done, or None when the transaction is finished."""
        chunk = self.conn.execute(_CHUNK, {
            "txn": txn_id, "u": after[0] if after else None, "c": after[1] if after else None,
            "n": limit, "user_prefix": accounts.prefix(accounts.USER)}).all()
        if not chunk:
            return None
        moves = {(r.user_id, r.currency): (int(r.first_before), int(r.balance)) for r in chunk}
        self.refresh_balance_alerts(self.tiers_of(list({u for u, _ in moves})), moves, txn_id)
        # Keyset order is byte order ("C"), the same as Python's string order.
        return max(moves) if len(chunk) == limit else None

    def expire_balance_alerts(self) -> None:
        """Resolve the open alerts of the kinds that clear by time whose ``clears_at`` has
        passed (``domain.guard.EXPIRING_ALERT_KINDS``)."""
        a = t.alerts.c
        keys = list(self.conn.execute(
            select(a.dedupe_key)
            .where(a.status != "resolved", a.kind == t.any_text("kinds", EXPIRING_ALERT_KINDS),
                   cast(a.data["clears_at"].astext, DateTime(timezone=True)) <= func.now())
            .order_by(a.id).with_for_update(skip_locked=True)).scalars())
        alerts.resolve_alerts(self.unit, keys, note="window passed")

    def tell_refusal(self, events: Events, raised: Sequence[AlertSpec]) -> None:
        """A refusal's events and alerts, committed in a transaction of their own (the
        change's is about to roll back, and the refusal must still be told)."""
        with Transaction(self.unit.broker(), engine=self.unit.engine) as side:
            # Never wait long on the outer transaction's locks (it waits for us).
            side.conn.execute(text("SET LOCAL lock_timeout = '5s'"))
            side.emit_many(list(events))
            if raised:
                alerts.raise_alerts(side, [Alert(*a) for a in raised])
            side.commit()


def tiers_of(conn: Connection, user_ids: Sequence[str]) -> dict[str, str]:
    """Stored tiers of ``user_ids`` in one query (absent: bronze)."""
    if not user_ids:
        return {}
    return dict(conn.execute(
        select(t.user_tiers.c.user_id, t.user_tiers.c.tier)
        .where(t.user_tiers.c.user_id == t.any_text("u", user_ids))).all())


def load_limits(conn: Connection) -> LimitTable:
    """Every stored (tier, currency) row of ``guard_limits`` (else SPEC §4's table)."""
    g = t.guard_limits.c
    rows = conn.execute(select(g.tier, g.currency, g.min_balance, g.max_balance, g.daily_limit,
                               g.weekly_limit, g.warning_threshold, g.critical_threshold))
    return LimitTable({(r.tier, r.currency): Limits(*r) for r in rows})


def set_limits(conn: Connection, limits: Limits, by: str) -> Limits:
    """Store one tier's limits in one currency (``ballast guard set-limit``)."""
    upsert = insert(t.guard_limits).values(
        tier=limits.tier, currency=limits.currency, min_balance=limits.min_balance,
        max_balance=limits.max_balance, daily_limit=limits.daily, weekly_limit=limits.weekly,
        warning_threshold=limits.warning, critical_threshold=limits.critical, updated_by=by)
    x = upsert.excluded
    conn.execute(upsert.on_conflict_do_update(
        index_elements=[t.guard_limits.c.tier, t.guard_limits.c.currency],
        set_={"min_balance": x.min_balance, "max_balance": x.max_balance,
              "daily_limit": x.daily_limit, "weekly_limit": x.weekly_limit,
              "warning_threshold": x.warning_threshold,
              "critical_threshold": x.critical_threshold, "updated_at": func.now(),
              "updated_by": x.updated_by}))
    return limits


def usage(conn: Connection, wallets: Sequence[tuple[str, str]],
          now: datetime | None = None) -> dict[tuple[str, str], Usage]:
    """Σ|user-initiated changes| of each wallet in its trailing windows (one query; a change
    exactly one window old is out: ``domain.guard.DAILY_WINDOW``/``WEEKLY_WINDOW``, bound).
    ``now`` defaults to the transaction's time."""
    if not wallets:
        return {}
    rows = conn.execute(_USAGE, {
        "now": now, "users": [u for u, _ in wallets], "curs": [c for _, c in wallets],
        "day": DAILY_WINDOW, "week": WEEKLY_WINDOW})
    return {(r.user_id, r.currency): Usage(int(r.daily), int(r.weekly)) for r in rows}


#: The domain's risk terms (``domain.guard.RISK_*``), bound into ``risk_sql``'s statements.
RISK_PARAMS: dict[str, Any] = {
    "_rl_num": RISK_LARGE[0].numerator, "_rl_den": RISK_LARGE[0].denominator,
    "_rl_pts": RISK_LARGE[1],
    "_rv_num": RISK_VERY_LARGE[0].numerator, "_rv_den": RISK_VERY_LARGE[0].denominator,
    "_rv_pts": RISK_VERY_LARGE[1],
    "_rn_pts": RISK_NEGATIVE, "_rt": json.dumps(dict(RISK_TIER)),
}


def risk_sql(before: str, amount: str, tier: str) -> str:
    """``domain.guard.risk_score`` in SQL over three column expressions (exact numeric
    arithmetic, as Python's integers), its terms bound from the domain: the statement
    carries ``RISK_PARAMS``.  The property test ``test_the_database_scores_risk_as_the_domain``
    holds the two equal."""
    size, base = f"abs(CAST({amount} AS numeric))", f"abs(CAST({before} AS numeric))"

    def exceeds(p: str) -> str:
        return f"CAST(:_{p}_den AS numeric) * {size} > CAST(:_{p}_num AS numeric) * {base}"
    return (f"CAST(GREATEST(0, LEAST(100, (CASE WHEN {exceeds('rl')} THEN CAST(:_rl_pts AS int) + "
            f"(CASE WHEN {exceeds('rv')} THEN CAST(:_rv_pts AS int) ELSE 0 END) ELSE 0 END) + "
            f"(CASE WHEN CAST({before} AS numeric) + CAST({amount} AS numeric) < 0 "
            "THEN CAST(:_rn_pts AS int) ELSE 0 END) + "
            f"COALESCE(CAST(CAST(:_rt AS jsonb) ->> {tier} AS int), 0))) AS smallint)")


def record_select(conn: Connection, kind: str, select_sql: str, params: dict[str, Any], *,
                  performed_by: str = "system") -> int:
    """The audit lines of many *system* changes of one ``kind`` (a settlement's payouts),
    written by the database in one INSERT … SELECT: nothing per change passes through Python.

    ``select_sql`` gives one row per change: ``transaction_id``, ``user_id``, ``currency``,
    ``amount``, ``balance_before``, ``reason``, ``metadata`` (jsonb) and ``ord`` (the order of
    the lines).  Each line gets the user's tier and its risk score (``risk_sql``), as
    ``record`` does.  User-initiated kinds are refused: those go through the guard first.
    The balance alerts are the caller's.  Returns how many lines.
    """
    if WalletChange("-", "-", 0, kind).user_initiated:
        raise InvalidCommand(f"{kind} changes are user-initiated: they are checked one by one")
    tier = "COALESCE(ut.tier, CAST(:_default_tier AS text))"
    return conn.execute(text(
        "INSERT INTO wallet_audit (transaction_id, user_id, currency, kind, user_initiated, "
        "amount, balance_before, balance_after, reason, performed_by, metadata, risk_score, tier) "
        "SELECT x.transaction_id, x.user_id, x.currency, CAST(:_kind AS text), false, x.amount, "
        "x.balance_before, x.balance_before + x.amount, x.reason, CAST(:_by AS text), x.metadata, "
        f"{risk_sql('x.balance_before', 'x.amount', tier)}, {tier} "
        f"FROM ({select_sql}) x LEFT JOIN user_tiers ut ON ut.user_id = x.user_id ORDER BY x.ord"),
        {**params, **RISK_PARAMS, "_kind": kind, "_by": performed_by,
         "_default_tier": DEFAULT_TIER},
    ).rowcount
