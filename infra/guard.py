"""The balance guard's place in every wallet change (SPEC §4).

``check`` runs with the wallet accounts already locked (``apply_changes`` locks
them FOR UPDATE), before anything is written: two changes to one wallet are
serialised by that lock, so the second one's window sums see the first one's
audit line and together they never exceed a limit.  ``record`` runs after the
ledger posting, in the same transaction: the audit trail and the balance
alerts, set-based (one statement for N changes).
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any, Sequence

from sqlalchemy import Connection, text

from domain import accounts
from domain import guard as rules
from domain.errors import InvalidCommand
from domain.guard import DAILY_WINDOW, DEFAULT_TIER, WEEKLY_WINDOW, Limits, Usage
from domain.money import format_minor
from domain.wallet import BalanceRefused, WalletChange
from infra import alerts, ledger, outbox
from infra.alerts import Alert, OutboxOnly, Unit
from infra.db.engine import pg_array, sql

Paired = Sequence[tuple[WalletChange, int]]


# --- tiers and limits -----------------------------------------------------------------------

def tier_of(conn: Connection, user_id: str) -> str:
    """The user's tier (bronze until set)."""
    return tiers_of(conn, [user_id]).get(user_id, DEFAULT_TIER)


def tiers_of(conn: Connection, user_ids: Sequence[str]) -> dict[str, str]:
    """Stored tiers of ``user_ids`` in one query (absent: bronze)."""
    if not user_ids:
        return {}
    return dict(conn.execute(
        text("SELECT t.user_id, t.tier FROM user_tiers t "
             "JOIN json_array_elements_text(CAST(:u AS json)) AS x(user_id) ON x.user_id = t.user_id"),
        {"u": json.dumps(list(user_ids))},
    ).all())


def set_tier(uow, user_id: str, tier: str, request_id: str | None = None) -> str:
    """Store ``user_id``'s tier; returns the previous one.  Emits ``wallet.tier_changed``."""
    if tier not in rules.TIERS:
        raise InvalidCommand(f"unknown tier {tier!r}")
    previous = uow.conn.execute(
        text("SELECT tier FROM user_tiers WHERE user_id = :u FOR UPDATE"), {"u": user_id}
    ).scalar_one_or_none() or DEFAULT_TIER
    uow.conn.execute(
        text("INSERT INTO user_tiers (user_id, tier) VALUES (:u, :t) ON CONFLICT (user_id) "
             "DO UPDATE SET tier = EXCLUDED.tier, updated_at = now()"),
        {"u": user_id, "t": tier},
    )
    uow.conn.execute(
        text("INSERT INTO tier_changes (user_id, previous_tier, tier, request_id) "
             "VALUES (:u, :p, :t, :r)"),
        {"u": user_id, "p": previous, "t": tier, "r": request_id},
    )
    uow.emit("wallet.tier_changed", {"user_id": user_id, "tier": tier, "previous_tier": previous},
             recipient=user_id)
    return previous


class LimitTable:
    """Every (tier, currency) row of ``guard_limits``, falling back to SPEC §4's table."""

    def __init__(self, rows: dict[tuple[str, str], Limits]) -> None:
        self.rows = rows

    @classmethod
    def load(cls, conn: Connection) -> "LimitTable":
        rows = conn.execute(text(
            "SELECT tier, currency, min_balance, max_balance, daily_limit, weekly_limit, "
            "warning_threshold, critical_threshold FROM guard_limits"))
        return cls({(r.tier, r.currency): Limits(r.tier, r.currency, r.min_balance, r.max_balance,
                                                 r.daily_limit, r.weekly_limit, r.warning_threshold,
                                                 r.critical_threshold) for r in rows})

    def get(self, tier: str, currency: str) -> Limits:
        found = self.rows.get((tier, currency))
        if found is None:
            found = self.rows[(tier, currency)] = rules.default_limits(tier, currency)
        return found


def set_limits(conn: Connection, limits: Limits, by: str) -> Limits:
    """Store one tier's limits in one currency (``ballast guard set-limit``)."""
    conn.execute(
        text("INSERT INTO guard_limits (tier, currency, min_balance, max_balance, daily_limit, "
             "weekly_limit, warning_threshold, critical_threshold, updated_by) VALUES "
             "(:t, :c, :lo, :hi, :d, :w, :warn, :crit, :by) ON CONFLICT (tier, currency) DO UPDATE SET "
             "min_balance = EXCLUDED.min_balance, max_balance = EXCLUDED.max_balance, "
             "daily_limit = EXCLUDED.daily_limit, weekly_limit = EXCLUDED.weekly_limit, "
             "warning_threshold = EXCLUDED.warning_threshold, "
             "critical_threshold = EXCLUDED.critical_threshold, updated_at = now(), "
             "updated_by = EXCLUDED.updated_by"),
        {"t": limits.tier, "c": limits.currency, "lo": limits.min_balance, "hi": limits.max_balance,
         "d": limits.daily, "w": limits.weekly, "warn": limits.warning, "crit": limits.critical,
         "by": by},
    )
    return limits


# --- the guard in apply_changes ---------------------------------------------------------------

def usage(conn: Connection, wallets: Sequence[tuple[str, str]],
          now: datetime | None = None) -> dict[tuple[str, str], Usage]:
    """Σ|user-initiated changes| of each wallet in its trailing 24 h and 7 d (one query).

    A change exactly 24 h (7 d) old is out of its window.  ``now`` defaults to the
    transaction's time.
    """
    if not wallets:
        return {}
    rows = conn.execute(
        text(
            "WITH t AS (SELECT COALESCE(CAST(:now AS timestamptz), now()) AS now) "
            "SELECT a.user_id, a.currency, "
            "COALESCE(sum(abs(a.amount)) FILTER (WHERE a.created_at > t.now - CAST(:day AS interval)), 0) AS daily, "
            "COALESCE(sum(abs(a.amount)), 0) AS weekly "
            "FROM unnest(CAST(:users AS text[]), CAST(:curs AS text[])) AS w(user_id, currency) "
            "CROSS JOIN t JOIN wallet_audit a ON a.user_id = w.user_id AND a.currency = w.currency "
            "AND a.user_initiated AND a.created_at > t.now - CAST(:week AS interval) "
            "GROUP BY a.user_id, a.currency"
        ),
        {"now": now, "users": [u for u, _ in wallets], "curs": [c for _, c in wallets],
         "day": DAILY_WINDOW, "week": WEEKLY_WINDOW},
    )
    return {(r.user_id, r.currency): Usage(int(r.daily), int(r.weekly)) for r in rows}


#: Up to this many wallets, ``check`` and ``record`` read everything they need (tiers,
#: limits, window sums, open balance alerts) in one statement (``Context``); a bigger
#: batch (a settlement) reads it set-wise as before.
CONTEXT_WALLETS = 100

#: The balance-alert kinds whose open alerts a wallet change may refresh or resolve.
BALANCE_ALERT_KINDS = ("balance_warning", "balance_critical", "significant_drop",
                       "limit_exceeded")


class Context:
    """What the guard needs of a few wallets, read in one statement once they are locked:
    each user's tier, the limits of (tier, currency), the trailing-window sums of the
    wallets that have user-initiated changes, and the wallets' open balance alerts
    (``dedupe_key -> balance_before`` of a significant drop, None for other kinds).

    Read after the wallet rows are locked (``apply_changes``), it is what reading each
    piece later in the same transaction would give: every writer of these wallets' audit
    lines and balance alerts holds the same locks.
    """

    def __init__(self, tiers: dict[str, str], table: LimitTable,
                 used: dict[tuple[str, str], Usage], open_alerts: dict[str, int | None]) -> None:
        self.tiers = tiers
        self.table = table
        self.used = used
        self.open_alerts = open_alerts

    @classmethod
    def load(cls, conn: Connection, changes: Paired, now: datetime | None = None) -> "Context":
        wallets = sorted({(c.user_id, c.currency) for c, _ in changes})
        initiated = {(c.user_id, c.currency) for c, _ in changes if c.user_initiated}
        rows = conn.execute(_CONTEXT, {
            "now": now, "users": [u for u, _ in wallets], "curs": [c for _, c in wallets],
            "mine": [w in initiated for w in wallets], "kinds": list(BALANCE_ALERT_KINDS),
            "default": DEFAULT_TIER,
        }).all()
        return cls.of_rows(rows)

    @classmethod
    def lock_and_load(cls, conn: Connection, wanted: dict[str, str],
                      changes: Sequence[WalletChange],
                      now: datetime | None = None) -> tuple[dict[str, "ledger.Account"], "Context"]:
        """``ledger.open_and_lock_accounts(wanted)`` and ``load`` of ``changes``' wallets in
        one statement (``wallet_lock_context``, migration 0016): the context is read by a
        statement of its own after the locks are granted, as ``load`` after the locks is."""
        wallets = sorted({(c.user_id, c.currency) for c in changes})
        initiated = {(c.user_id, c.currency) for c in changes if c.user_initiated}
        rows = conn.execute(_LOCK_CONTEXT, {
            **ledger.account_arrays(wanted),
            "now": now, "users": pg_array([u for u, _ in wallets]),
            "wcurs": pg_array([c for _, c in wallets]),
            "mine": pg_array([w in initiated for w in wallets]), "kinds": _KINDS_ARRAY,
            "default": DEFAULT_TIER,
        }).all()
        locked = {r.code: ledger.account_of(r) for r in rows if r.what == "account"}
        return locked, cls.of_rows([r for r in rows if r.what == "wallet"])

    @classmethod
    def of_rows(cls, rows) -> "Context":
        """The context from ``_CONTEXT``'s rows (or ``wallet_lock_context``'s wallet rows)."""
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
        return cls(tiers, LimitTable(limits), used, open_alerts)


_KINDS_ARRAY = pg_array(BALANCE_ALERT_KINDS)
_LOCK_CONTEXT = sql(
    "SELECT * FROM wallet_lock_context(CAST(:codes AS text[]), CAST(:curs AS text[]), "
    "CAST(:negs AS boolean[]), CAST(:sharded AS boolean[]), CAST(:users AS text[]), "
    "CAST(:wcurs AS text[]), CAST(:mine AS boolean[]), CAST(:kinds AS text[]), "
    "CAST(:default AS text), CAST(:now AS timestamptz))"
)

_CONTEXT = text(
    "WITH t AS (SELECT COALESCE(CAST(:now AS timestamptz), now()) AS now), "
    "w AS (SELECT * FROM unnest(CAST(:users AS text[]), CAST(:curs AS text[]), "
    "CAST(:mine AS boolean[])) AS w(user_id, currency, mine)) "
    "SELECT w.user_id, w.currency, ut.tier AS stored_tier, COALESCE(ut.tier, :default) AS tier, "
    "g.min_balance, g.max_balance, g.daily_limit, g.weekly_limit, g.warning_threshold, "
    "g.critical_threshold, u.daily, u.weekly, al.keys AS alert_keys, al.befores AS alert_befores "
    "FROM w CROSS JOIN t "
    "LEFT JOIN user_tiers ut ON ut.user_id = w.user_id "
    "LEFT JOIN guard_limits g ON g.tier = COALESCE(ut.tier, :default) AND g.currency = w.currency "
    "LEFT JOIN LATERAL (SELECT "
    "COALESCE(sum(abs(a.amount)) FILTER (WHERE a.created_at > t.now - interval '24 hours'), 0) AS daily, "
    "COALESCE(sum(abs(a.amount)), 0) AS weekly FROM wallet_audit a "
    "WHERE a.user_id = w.user_id AND a.currency = w.currency AND a.user_initiated "
    "AND a.created_at > t.now - interval '7 days') u ON w.mine "
    "LEFT JOIN LATERAL (SELECT array_agg(a.dedupe_key) AS keys, array_agg(CASE WHEN "
    "a.kind = 'significant_drop' THEN CAST(a.data->>'balance_before' AS bigint) END) AS befores "
    "FROM alerts a WHERE a.status <> 'resolved' AND a.dedupe_key = ANY(ARRAY(SELECT "
    "k || ':' || w.user_id || ':' || w.currency FROM unnest(CAST(:kinds AS text[])) AS k))) al ON true"
)


def check(conn: Connection, changes: Paired, *, now: datetime | None = None,
          context: Context | None = None) -> None:
    """Validate user-initiated changes; ``changes`` pairs each change with its balance before.

    Raises BalanceRefused (naming the rule and by how much) for the first change that
    breaks a rule; system changes are never refused.  ``context``: what ``Context.load``
    read for these changes (else read here).
    """
    mine = [(c, before) for c, before in changes if c.user_initiated]
    if not mine:
        return
    if context is not None:
        tiers, table, used = context.tiers, context.table, dict(context.used)
    else:
        wallets = sorted({(c.user_id, c.currency) for c, _ in mine})
        tiers = tiers_of(conn, sorted({u for u, _ in wallets}))
        table = LimitTable.load(conn)
        used = usage(conn, wallets, now)
    for change, before in mine:
        key = (change.user_id, change.currency)
        limits = table.get(tiers.get(change.user_id, DEFAULT_TIER), change.currency)
        already = used.get(key, Usage())
        rules.validate(change, before, limits, already)
        used[key] = already.plus(abs(change.amount))


#: Up to this many wallets in one transaction get their balance alerts inline; a bigger
#: (system) batch hands them to the ``evaluate_balance_alerts`` step, in chunks, so a
#: 100,000-payout settlement is not held up by alert bookkeeping.
INLINE_ALERT_WALLETS = 100
ALERT_CHUNK_WALLETS = 5_000


def record(conn: Connection, changes: Paired, txn_id: int, uow: Unit | None = None,
           context: Context | None = None,
           events: list[tuple[str, dict[str, Any], str | None]] | None = None) -> None:
    """Audit trail and balance alerts for every change (system ones included), and the
    caller's ``events`` (``(name, data, recipient)``, e.g. ``wallet.changed``).

    One INSERT for the audit lines, whatever the number of changes; the balance
    alerts inline for a few wallets, else deferred to ``evaluate_balance_alerts``.
    Alert events and messages go through ``uow`` (or, without one, through the
    outbox for the sweeper).  With a ``context`` (a few wallets, ``Context.load``) the
    audit lines, the events and the alerts raised or refreshed are written in one
    statement.
    """
    if not changes:
        return
    unit = uow if uow is not None else OutboxOnly(conn)
    tiers = context.tiers if context is not None else tiers_of(conn, list({c.user_id for c, _ in changes}))
    rows, wallets = _audit_rows(changes, tiers)
    audit = _audit_sql(":txn")
    params = {"txn": txn_id, "rows": json.dumps(rows, default=str)}
    if context is not None and len(wallets) <= INLINE_ALERT_WALLETS:
        _record_at_once(unit, audit, params, tiers, wallets, txn_id, context, events or [])
        return
    conn.execute(text(audit), params)
    if events:
        unit.emit_many(events)
    if len(wallets) <= INLINE_ALERT_WALLETS:
        _balance_alerts(unit, tiers, wallets, txn_id)
    else:
        unit.send("evaluate_balance_alerts", request_id=f"balance-alerts:{txn_id}:0",
                  transaction_id=txn_id)


def _audit_rows(changes: Paired, tiers: dict[str, str]) -> tuple[
        list[dict[str, Any]], dict[tuple[str, str], tuple[int, int]]]:
    """The audit lines of ``changes`` (for ``_audit_sql``'s JSON) and each wallet's
    (balance before its first change, balance after its last)."""
    rows = []
    wallets: dict[tuple[str, str], tuple[int, int]] = {}
    for c, before in changes:
        tier = tiers.get(c.user_id, DEFAULT_TIER)
        rows.append({"u": c.user_id, "c": c.currency, "k": c.kind, "ui": c.user_initiated,
                     "a": c.amount, "b": before, "r": c.reason or None, "p": c.performed_by,
                     "m": c.metadata or None, "rs": rules.risk_score(before, c.amount, tier), "t": tier})
        key = (c.user_id, c.currency)
        first = wallets[key][0] if key in wallets else before
        wallets[key] = (first, before + c.amount)
    return rows, wallets


def _audit_sql(txn: str, source: str = "") -> str:
    """The audit lines' INSERT from the JSON ``:rows``; ``txn``: the SQL of their ledger
    transaction id (``:txn``, or a column of ``source``, a relation joined in)."""
    # One JSON document rather than eleven arrays: far cheaper to bind for 100,000 rows.
    return ("INSERT INTO wallet_audit (transaction_id, user_id, currency, kind, user_initiated, "
            "amount, balance_before, balance_after, reason, performed_by, metadata, risk_score, tier) "
            f"SELECT {txn}, x.u, x.c, x.k, x.ui, x.a, x.b, x.b + x.a, x.r, x.p, x.m, x.rs, x.t "
            f"FROM {source}json_to_recordset(CAST(:rows AS json)) AS x(u text, c text, k text, "
            "ui boolean, a bigint, b bigint, r text, p text, m jsonb, rs smallint, t text)")


def post_and_record(unit: Unit, changes: Paired, posting: "ledger.PreparedPosting",
                    context: Context,
                    events: list[tuple[str, dict[str, Any], str | None]]) -> int:
    """``ledger`` posting plus ``record`` in one statement, for a few wallets with their
    ``context`` (``Context.lock_and_load``): the posting (``ledger_post_many``), the audit
    lines, the ``events`` and the balance alerts raised or refreshed, each written only
    once the posting is (a refusal writes nothing and is raised as ``ledger.post`` raises
    it).  Every event's ``data["transaction_id"]`` and every alert's is set to the
    transaction's id (in the database and in the dicts).  Returns the transaction id.

    For a posting with an idempotency key (a repeat must give the earlier transaction),
    use ``ledger.post`` then ``record``.
    """
    conn = unit.conn
    assert len(posting.checked) == 1 and posting.checked[0][0].idempotency_key is None
    rows, wallets = _audit_rows(changes, context.tiers)
    raised, resolve = _alert_decisions(context.table, context.tiers, wallets, None,
                                       context.open_alerts)
    raised = alerts.distinct(raised)
    parts = [f"p AS ({posting.sql})",
             "txn AS (SELECT p.ids[1] AS id FROM p WHERE p.status = 'posted')",
             f"aud AS ({_audit_sql('txn.id', 'txn CROSS JOIN ')})"]
    params: dict[str, Any] = {**posting.params, "rows": json.dumps(rows, default=str)}
    outputs = ["p.*"]
    bodies: list[dict[str, Any]] = []
    if events:
        ev_sql, ev_params, bodies = outbox.events_statement(events, transaction_from="txn")
        parts.append(f"ev AS ({ev_sql})")
        params.update(ev_params)
        outputs += ["(SELECT array_agg(id) FROM ev) AS ev_ids",
                    "(SELECT array_agg(key) FROM ev) AS ev_keys"]
    if raised:
        al_sql, al_params = alerts.upsert_statement(raised, transaction_from="txn")
        parts.append(f"al AS ({al_sql})")
        params.update(al_params)
        outputs += ["(SELECT array_agg(key) FILTER (WHERE inserted) FROM al) AS al_new_keys",
                    "(SELECT array_agg(id) FILTER (WHERE inserted) FROM al) AS al_new_ids"]
    row = conn.execute(sql(f"WITH {', '.join(parts)} SELECT {', '.join(outputs)} FROM p"),
                       params).one()
    txn_id = posting.outcome(conn, row)[0]  # raises on a refusal (nothing was written)
    for b in bodies:
        b["data"]["transaction_id"] = txn_id
    for a in raised:
        a.data["transaction_id"] = txn_id
    if bodies:
        out = outbox.rows_of(bodies, dict(zip(row.ev_keys or [], row.ev_ids or [])))
        if hasattr(unit, "publish_after_commit"):
            unit.publish_after_commit(out)  # (an OutboxOnly unit leaves them to the sweeper)
    if raised:
        alerts.announce_raised(unit, raised, dict(zip(row.al_new_keys or [], row.al_new_ids or [])))
    alerts.resolve_alerts(unit, [k for k in resolve if k in context.open_alerts],
                          note="balance back within limits")
    return txn_id


def risk_sql(before: str, amount: str, tier: str) -> str:
    """``domain.guard.risk_score`` in SQL over three column expressions (exact numeric
    arithmetic, as Python's integers); the property test
    ``test_the_database_scores_risk_as_the_domain`` holds the two equal."""
    size, base = f"abs(CAST({amount} AS numeric))", f"abs(CAST({before} AS numeric))"
    return (f"CAST(GREATEST(0, LEAST(100, (CASE WHEN 2 * {size} > {base} THEN 20 + "
            f"(CASE WHEN 5 * {size} > 4 * {base} THEN 30 ELSE 0 END) ELSE 0 END) + "
            f"(CASE WHEN CAST({before} AS numeric) + CAST({amount} AS numeric) < 0 THEN 25 "
            f"ELSE 0 END) + (CASE {tier} WHEN 'bronze' THEN 10 WHEN 'diamond' THEN -10 "
            "ELSE 0 END))) AS smallint)")


def record_select(conn: Connection, kind: str, select_sql: str, params: dict[str, Any], *,
                  performed_by: str = "system") -> int:
    """The audit lines of many *system* changes of one ``kind`` (a settlement's payouts),
    written by the database in one INSERT … SELECT: nothing per change passes through Python.

    ``select_sql`` gives one row per change: ``transaction_id``, ``user_id``, ``currency``,
    ``amount``, ``balance_before``, ``reason``, ``metadata`` (jsonb) and ``ord`` (the order of
    the lines).  Each line gets the user's tier and its risk score (``risk_sql``), as
    ``record`` does.  User-initiated kinds are refused: those go through ``check`` first.
    The balance alerts are the caller's (``alerts_after``).  Returns how many lines.
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
        {**params, "_kind": kind, "_by": performed_by, "_default_tier": DEFAULT_TIER},
    ).rowcount


def alerts_after(uow: Unit, txn_id: int, wallets: int) -> None:
    """The balance alerts of a transaction whose audit lines are written (``record_select``):
    inline for up to INLINE_ALERT_WALLETS wallets, else handed to ``evaluate_balance_alerts``
    (as ``record`` does)."""
    if wallets <= INLINE_ALERT_WALLETS:
        evaluate_deferred(uow, txn_id)
    else:
        uow.send("evaluate_balance_alerts", request_id=f"balance-alerts:{txn_id}:0",
                 transaction_id=txn_id)


def _record_at_once(unit: Unit, audit: str, params: dict[str, Any], tiers: dict[str, str],
                    wallets: dict[tuple[str, str], tuple[int, int]], txn_id: int,
                    context: Context, events: list[tuple[str, dict[str, Any], str | None]]) -> None:
    """Audit lines, events and the alerts to raise or refresh in one statement (CTEs);
    alerts to resolve (and a new alert's announcement) in their own, only when there are."""
    raised, resolve = _alert_decisions(context.table, tiers, wallets, txn_id,
                                       context.open_alerts)
    raised = alerts.distinct(raised)
    parts, selects = [f"aud AS ({audit})"], []
    bodies: list[dict[str, Any]] = []
    if events:
        ev_sql, ev_params, bodies = outbox.events_statement(events)
        parts.append(f"ev AS ({ev_sql})")
        params = {**params, **ev_params}
        selects.append("SELECT 'ev' AS what, id, key, NULL::boolean AS inserted FROM ev")
    if raised:
        al_sql, al_params = alerts.upsert_statement(raised)
        parts.append(f"al AS ({al_sql})")
        params = {**params, **al_params}
        selects.append("SELECT 'al' AS what, id, key, inserted FROM al")
    if not selects:
        selects.append("SELECT NULL::text AS what, NULL::bigint AS id, NULL::text AS key, "
                       "NULL::boolean AS inserted WHERE false")
    got = unit.conn.execute(sql(f"WITH {', '.join(parts)} {' UNION ALL '.join(selects)}"),
                            params).all()
    if bodies:
        rows = outbox.rows_of(bodies, {r.key: r.id for r in got if r.what == "ev"})
        if hasattr(unit, "publish_after_commit"):
            unit.publish_after_commit(rows)  # (an OutboxOnly unit leaves them to the sweeper)
    alerts.announce_raised(unit, raised, {r.key: r.id for r in got if r.what == "al" and r.inserted})
    alerts.resolve_alerts(unit, [k for k in resolve if k in context.open_alerts],
                          note="balance back within limits")


def _alert_decisions(table: LimitTable, tiers: dict[str, str],
                     wallets: dict[tuple[str, str], tuple[int, int]], txn_id: int,
                     open_alerts: dict[str, int | None]) -> tuple[list[Alert], list[str]]:
    """The balance alerts to raise and the keys to resolve, from what ``Context`` read."""
    clears_at = (datetime.now(timezone.utc) + rules.SIGNIFICANT_DROP_WINDOW).isoformat()
    raised: list[Alert] = []
    resolve: list[str] = []
    for (user, cur), (before, after) in wallets.items():
        limits = table.get(tiers.get(user, DEFAULT_TIER), cur)
        decision = rules.balance_alerts(before, after, limits)
        for kind in decision.raise_kinds:
            raised.append(_balance_alert(kind, user, cur, before, after, limits, txn_id, clears_at))
        resolve += [alert_key(kind, user, cur) for kind in decision.resolve_kinds]
        drop = alert_key("significant_drop", user, cur)
        # A drop is over once the wallet is back where it was before the drop.
        if after > before and open_alerts.get(drop) is not None and after >= open_alerts[drop]:
            resolve.append(drop)
    return raised, resolve


def evaluate_deferred(uow: Unit, txn_id: int, after: tuple[str, str] | None = None,
                      limit: int = ALERT_CHUNK_WALLETS) -> tuple[str, str] | None:
    """Balance alerts of the next ``limit`` wallets of a big transaction, by current balance.

    The chunk's wallets are locked (id order, as the ledger does) so no change slips
    between reading a balance and raising its alert.  Returns the last wallet done,
    or None when the transaction is finished.
    """
    chunk = uow.conn.execute(
        text(
            "SELECT w.user_id, w.currency, w.first_before, a.balance FROM ("
            "  SELECT user_id, currency, (array_agg(balance_before ORDER BY id))[1] AS first_before "
            "  FROM wallet_audit WHERE transaction_id = :txn "
            "  AND (CAST(:u AS text) IS NULL OR (user_id COLLATE \"C\", currency COLLATE \"C\") > (:u, :c)) "
            "  GROUP BY user_id, currency ORDER BY user_id COLLATE \"C\", currency COLLATE \"C\" "
            "  LIMIT :n) w "
            "JOIN accounts a ON a.code = CAST(:user_prefix AS text) || w.user_id || ':' || w.currency "
            "ORDER BY a.id FOR UPDATE OF a"
        ),
        {"txn": txn_id, "u": after[0] if after else None, "c": after[1] if after else None,
         "n": limit, "user_prefix": accounts.prefix(accounts.USER)},
    ).all()
    if not chunk:
        return None
    wallets = {(r.user_id, r.currency): (int(r.first_before), int(r.balance)) for r in chunk}
    tiers = tiers_of(uow.conn, list({u for u, _ in wallets}))
    _balance_alerts(uow, tiers, wallets, txn_id)
    # Keyset order is byte order ("C"), the same as Python's string order.
    return max(wallets) if len(chunk) == limit else None


def _balance_alerts(unit: Unit, tiers: dict[str, str],
                    wallets: dict[tuple[str, str], tuple[int, int]], txn_id: int) -> None:
    """Raise the balance alerts that hold for each wallet (``(user, currency) -> (balance
    before, balance after)``), resolve those that no longer do."""
    table = LimitTable.load(unit.conn)
    clears_at = (datetime.now(timezone.utc) + rules.SIGNIFICANT_DROP_WINDOW).isoformat()
    raised: list[Alert] = []
    resolve: list[str] = []
    recovered: dict[str, int] = {}
    for (user, cur), (before, after) in wallets.items():
        limits = table.get(tiers.get(user, DEFAULT_TIER), cur)
        decision = rules.balance_alerts(before, after, limits)
        for kind in decision.raise_kinds:
            raised.append(_balance_alert(kind, user, cur, before, after, limits, txn_id, clears_at))
        resolve += [alert_key(kind, user, cur) for kind in decision.resolve_kinds]
        if after > before:
            recovered[alert_key("significant_drop", user, cur)] = after
    if recovered:
        # A drop is over once the wallet is back where it was before the drop.
        resolve += [
            r.dedupe_key for r in unit.conn.execute(
                text("SELECT a.dedupe_key FROM alerts a JOIN unnest(CAST(:k AS text[]), "
                     "CAST(:v AS bigint[])) AS x(key, after) ON a.dedupe_key = x.key "
                     "WHERE a.status <> 'resolved' AND a.kind = 'significant_drop' "
                     "AND x.after >= CAST(a.data->>'balance_before' AS bigint)"),
                {"k": list(recovered), "v": list(recovered.values())},
            )
        ]
    alerts.resolve_alerts(unit, _open_among(unit.conn, resolve), note="balance back within limits")
    alerts.raise_alerts(unit, raised)


def _open_among(conn: Connection, keys: list[str]) -> list[str]:
    """The keys (of many) that have an open alert: one lookup against the open alerts."""
    if not keys:
        return []
    return list(conn.execute(
        text("SELECT a.dedupe_key FROM alerts a JOIN unnest(CAST(:k AS text[])) AS x(key) "
             "ON a.dedupe_key = x.key WHERE a.status <> 'resolved'"),
        {"k": keys},
    ).scalars())


def alert_key(kind: str, user_id: str, currency: str) -> str:
    """One open balance alert per kind and wallet (a user has one wallet per currency)."""
    return f"{kind}:{user_id}:{currency}"


def _balance_alert(kind: str, user: str, cur: str, before: int, after: int, limits: Limits,
                   txn_id: int, clears_at: str) -> Alert:
    if kind == "significant_drop":
        subject = (f"{user} {cur} balance dropped from {format_minor(before, cur)} "
                   f"to {format_minor(after, cur)}")
    else:
        threshold = limits.critical if kind == "balance_critical" else limits.warning
        subject = (f"{user} {cur} balance {format_minor(after, cur)} is below "
                   f"{format_minor(threshold, cur)}")
    data = {"user_id": user, "currency": cur, "balance_before": before, "balance": after,
            "tier": limits.tier, "transaction_id": txn_id,
            "warning": limits.warning, "critical": limits.critical}
    if kind == "significant_drop":
        data["clears_at"] = clears_at
    return Alert(kind, rules.ALERT_SEVERITY[kind], subject, alert_key(kind, user, cur), data)


def refused(unit: Unit, error: BalanceRefused) -> None:
    """What a refusal leaves behind (in its own transaction, the change's rolled back):
    a ``balance.change_rejected`` event and, for a daily/weekly limit, ``limit_exceeded``."""
    data = error.data()
    unit.emit_many([("balance.change_rejected", data, data["user_id"])])
    window = rules.LIMIT_RULES.get(error.rule)
    if window is None or error.change is None:
        return
    c = error.change
    clears_at = datetime.now(timezone.utc) + window
    alerts.raise_alerts(unit, [Alert(
        "limit_exceeded", rules.ALERT_SEVERITY["limit_exceeded"],
        f"{c.user_id} {c.currency} {c.kind} refused by {error.rule}: over by "
        f"{format_minor(error.exceeded_by, c.currency)}",
        alert_key("limit_exceeded", c.user_id, c.currency),
        {**data, "clears_at": clears_at.isoformat()},
    )])


# --- reports -----------------------------------------------------------------------------------

def history(conn: Connection, user_id: str, currency: str | None = None,
            limit: int = 50, after: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
    """The wallet's audit trail, newest first (``after``: only lines older than that audit id;
    ``offset``: lines skipped, for the console's numbered pages)."""
    return history_page(conn, user_id, currency, limit, after, offset)[0]


def history_page(conn: Connection, user_id: str, currency: str | None = None, limit: int = 50,
                 after: int | None = None,
                 offset: int = 0) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the wallet's audit trail, newest first, and the next page's cursor."""
    rows = conn.execute(
        text("SELECT * FROM wallet_audit WHERE user_id = :u "
             "AND (CAST(:cur AS text) IS NULL OR currency = :cur) "
             "AND (CAST(:after AS bigint) IS NULL OR id < :after) ORDER BY id DESC LIMIT :n "
             "OFFSET :off"),
        {"u": user_id, "cur": currency, "n": limit + 1, "after": after, "off": offset},
    ).all()
    shown, cursor = rules.page(rows, limit, key=lambda r: r.id)
    return [_audit_line(r) for r in shown], cursor


def _audit_line(r) -> dict[str, Any]:
    return {"audit_id": r.id, "at": r.created_at.isoformat(), "transaction_id": r.transaction_id,
            "kind": r.kind, "currency": r.currency, "amount": r.amount,
            "balance_before": r.balance_before, "balance_after": r.balance_after,
            "reason": r.reason, "performed_by": r.performed_by, "risk_score": r.risk_score,
            "tier": r.tier, "metadata": r.metadata}


def recent_changes(conn: Connection, *, hours: int | None = 24, by: str | None = None,
                   min_risk: int = 0, limit: int = 50, after: int | None = None) -> dict[str, Any]:
    """Recent changes across all customers, newest first, keyset-paged on the audit id
    (``ballast audit recent``): a page never repeats or skips a line, whatever is written
    meanwhile (new lines have higher ids and are only on the first page of a new walk)."""
    rows = conn.execute(
        text("SELECT * FROM wallet_audit WHERE "
             "(CAST(:hours AS integer) IS NULL OR created_at >= now() - make_interval(hours => :hours)) "
             "AND (CAST(:by AS text) IS NULL OR performed_by = :by) AND risk_score >= :risk "
             "AND (CAST(:after AS bigint) IS NULL OR id < :after) ORDER BY id DESC LIMIT :n"),
        {"hours": hours, "by": by, "risk": min_risk, "after": after, "n": limit + 1},
    ).all()
    shown, cursor = rules.page(rows, limit, key=lambda r: r.id)
    return {"changes": [{"user_id": r.user_id, **_audit_line(r)} for r in shown],
            "next_cursor": cursor, "hours": hours, "performed_by": by, "min_risk": min_risk}


def limits_report(conn: Connection, user_id: str, currencies: Sequence[str]) -> dict[str, Any]:
    """Each wallet's limits and what its trailing windows already hold."""
    tier = tier_of(conn, user_id)
    table = LimitTable.load(conn)
    used = usage(conn, [(user_id, c) for c in currencies])
    out = {}
    for cur in currencies:
        lim = table.get(tier, cur)
        u = used.get((user_id, cur), Usage())
        out[cur] = {"min_balance": lim.min_balance, "max_balance": lim.max_balance,
                    "daily_limit": lim.daily, "daily_used": u.daily,
                    "weekly_limit": lim.weekly, "weekly_used": u.weekly,
                    "warning": lim.warning, "critical": lim.critical}
    return out


def analytics(conn: Connection, start: datetime, end: datetime, user_id: str | None = None,
              currency: str | None = None) -> dict[str, Any]:
    """SPEC §4's analytics over ``[start, end)`` for one user or the platform, per currency.

    Balances come from the ledger (the truth), changes and their types from the audit trail.
    """
    pattern = f"{accounts.prefix(accounts.USER)}{_escape_like(user_id)}:%" if user_id else f"{accounts.prefix(accounts.USER)}%"
    balances = conn.execute(
        text(
            "SELECT a.currency, "
            "COALESCE(sum(e.amount) FILTER (WHERE t.created_at < :start), 0) AS start_balance, "
            "COALESCE(sum(e.amount) FILTER (WHERE t.created_at < :end), 0) AS end_balance "
            "FROM accounts a LEFT JOIN ledger_entries e ON e.account_id = a.id "
            "LEFT JOIN ledger_transactions t ON t.id = e.transaction_id "
            "WHERE a.code LIKE :pattern AND (CAST(:cur AS text) IS NULL OR a.currency = :cur) "
            "GROUP BY a.currency"
        ),
        {"start": start, "end": end, "pattern": pattern, "cur": currency},
    ).all()
    stats = conn.execute(
        text(
            "SELECT currency, kind, count(*) AS n, sum(abs(amount)) AS s1, "
            "sum(CAST(amount AS numeric) * amount) AS s2, sum(amount) AS net FROM wallet_audit "
            "WHERE created_at >= :start AND created_at < :end "
            "AND (CAST(:user AS text) IS NULL OR user_id = :user) "
            "AND (CAST(:cur AS text) IS NULL OR currency = :cur) GROUP BY currency, kind"
        ),
        {"start": start, "end": end, "user": user_id, "cur": currency},
    ).all()
    per_cur: dict[str, dict[str, Any]] = defaultdict(lambda: {"n": 0, "s1": 0, "s2": 0, "by": {}})
    for r in stats:
        acc = per_cur[r.currency]
        acc["n"] += int(r.n)
        acc["s1"] += int(r.s1)
        acc["s2"] += int(r.s2)
        acc["by"][r.kind] = int(r.net)
    currencies = {}
    for r in sorted(balances, key=lambda r: r.currency):
        acc = per_cur[r.currency]
        st = rules.ChangeStats(acc["n"], acc["s1"], acc["s2"], acc["by"])
        currencies[r.currency] = rules.analyze(r.currency, int(r.start_balance), int(r.end_balance), st)
    return {"user_id": user_id, "start": start.isoformat(), "end": end.isoformat(),
            "currencies": currencies}


def agent_analytics(conn: Connection, start: datetime, end: datetime, agent: str,
                    currency: str | None = None) -> dict[str, Any]:
    """What one agent (``performed_by``: an operator, an upstream service, ``system``) did
    over ``[start, end)``, per currency, from the audit trail."""
    rows = conn.execute(
        text(
            "SELECT currency, kind, count(*) AS n, sum(abs(amount)) AS s1, "
            "sum(CAST(amount AS numeric) * amount) AS s2, sum(amount) AS net, "
            "max(risk_score) AS max_risk, count(*) FILTER (WHERE risk_score >= :risky) AS risky "
            "FROM wallet_audit WHERE performed_by = :agent AND created_at >= :start "
            "AND created_at < :end AND (CAST(:cur AS text) IS NULL OR currency = :cur) "
            "GROUP BY currency, kind"
        ),
        {"agent": agent, "start": start, "end": end, "cur": currency, "risky": rules.RISKY_SCORE},
    ).all()
    users = dict(conn.execute(
        text("SELECT currency, count(DISTINCT user_id) FROM wallet_audit WHERE performed_by = :agent "
             "AND created_at >= :start AND created_at < :end "
             "AND (CAST(:cur AS text) IS NULL OR currency = :cur) GROUP BY currency"),
        {"agent": agent, "start": start, "end": end, "cur": currency},
    ).all())
    per_cur: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"n": 0, "s1": 0, "s2": 0, "by": {}, "max": 0, "risky": 0})
    for r in rows:
        acc = per_cur[r.currency]
        acc["n"] += int(r.n)
        acc["s1"] += int(r.s1)
        acc["s2"] += int(r.s2)
        acc["by"][r.kind] = int(r.net)
        acc["max"] = max(acc["max"], int(r.max_risk))
        acc["risky"] += int(r.risky)
    currencies = {
        cur: rules.analyze_agent(cur, rules.ChangeStats(a["n"], a["s1"], a["s2"], a["by"]),
                                 int(users.get(cur, 0)), a["max"], a["risky"])
        for cur, a in sorted(per_cur.items())
    }
    return {"agent": agent, "user_id": None, "start": start.isoformat(), "end": end.isoformat(),
            "currencies": currencies}


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# --- conditions of the alert sweep --------------------------------------------------------------

def balance_alert_expiry(uow) -> None:
    """``limit_exceeded`` clears when the window that refused has rolled past the refusal;
    ``significant_drop`` a day after the last drop."""
    keys = list(uow.conn.execute(
        text("SELECT dedupe_key FROM alerts WHERE status <> 'resolved' "
             "AND kind IN ('limit_exceeded', 'significant_drop') "
             "AND CAST(data->>'clears_at' AS timestamptz) <= now() "
             "ORDER BY id FOR UPDATE SKIP LOCKED"),
    ).scalars())
    alerts.resolve_alerts(uow, keys, note="window passed")

