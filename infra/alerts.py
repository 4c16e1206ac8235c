"""The one alert store (SPEC §6): one open alert per dedupe key, and its webhook.

Raised and resolved alerts become ``alert.raised`` / ``alert.resolved``
events through the unit of work's outbox, so they go out only if the
transaction that raised them commits.  With ``BALLAST_ALERT_WEBHOOK_URL`` set,
each also gets a row in ``alert_deliveries`` in the same transaction; the
``deliver_alert_webhooks`` step POSTs those rows (retried, on its own queue),
so a slow or dead webhook never holds up the step that raised the alert.

Every function works on many alerts at once (one statement), because a
market settlement can move 100,000 wallets in one transaction.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Protocol, Sequence

import httpx
import sqlalchemy as sa
from sqlalchemy import Connection, Engine, text

from domain import request_ids
from domain.errors import NotFound, Refused
from infra import outbox, rabbit
from infra.auth import webhook_headers
from infra.db import tables
from infra.db.engine import sql
from infra.logs import get_logger
from infra.settings import get_settings
from infra.transaction import Transaction

log = get_logger(__name__)

SEVERITIES = ("info", "warning", "critical")

WEBHOOK_TIMEOUT_S = 5.0  # s, per POST
WEBHOOK_INLINE_ATTEMPTS = 3  # POSTs per delivery run before the row waits for the next run
WEBHOOK_INLINE_BACKOFF_S = 0.5  # s, doubled after each inline attempt
WEBHOOK_LEASE_S = 120  # s a claimed delivery is hidden from other deliverers
WEBHOOK_MAX_DELAY_S = 600  # s, cap of the backoff between delivery runs
WEBHOOK_EXPIRE_H = 24  # h after which an undelivered row is given up (and an alert says so)
WEBHOOK_STUCK_S = 300  # s an undelivered row may wait before ``webhook_failing`` is raised

# --- statements ----------------------------------------------------------------------------

_al, _dv, _dl = tables.alerts.c, tables.alert_deliveries.c, tables.dead_letters.c
#: In the statements, not bound: the partial indexes of open alerts (``status <> 'resolved'``),
#: of pending deliveries and of live dead letters say so.
_RESOLVED, _PENDING, _DEAD = (sa.literal_column(f"'{v}'") for v in ("resolved", "pending", "dead"))
#: ``data->>'user_id'``, with the key in the statement as the expression index has it.
_USER_ID = _al.data.op("->>")(sa.literal_column("'user_id'"))

#: Open alerts (distinct keys, as arrays): a new one is inserted, an open one refreshed; it
#: returns ``id, key, inserted`` (``xmax = 0`` only on a row this statement inserted, not on
#: one it updated).  Parameters are prefixed ``al_`` so the statement can be a CTE of a
#: bigger one (``uow.wallets.record``).
_UPSERT_ALERTS = (
    "INSERT INTO alerts (kind, severity, subject, dedupe_key, data) "
    "SELECT x.k, x.s, x.subj, x.key, {data} FROM jsonb_to_recordset(CAST(:al_rows AS jsonb)) "
    "AS x(k text, s text, subj text, key text, d jsonb, n int){join} "
    "ON CONFLICT (dedupe_key) WHERE status <> 'resolved' DO UPDATE SET "
    "subject = EXCLUDED.subject, data = EXCLUDED.data, updated_at = now() "
    "RETURNING id, dedupe_key AS key, (xmax = 0) AS inserted")
UPSERT_ALERTS = _UPSERT_ALERTS.format(data="x.d", join="")

#: One webhook delivery per (alert id, body) of the arrays ``:ids`` and ``:bodies``.
INSERT_DELIVERIES = text(
    "INSERT INTO alert_deliveries (alert_id, event, body) "
    "SELECT x.a, :event, CAST(x.b AS jsonb) FROM unnest(CAST(:ids AS bigint[]), "
    "CAST(:bodies AS text[])) AS x(a, b)")

#: Due pending deliveries, oldest first, claimed by hiding them for a lease (rows another
#: deliverer holds are skipped).
CLAIM_DELIVERIES = (
    sa.update(tables.alert_deliveries)
    .where(_dv.id.in_(
        sa.select(_dv.id).where(_dv.status == _PENDING, _dv.next_attempt_at <= sa.func.now())
        .order_by(_dv.id).limit(sa.bindparam("limit")).with_for_update(skip_locked=True)
        .scalar_subquery()))
    .values(next_attempt_at=sa.func.now() + sa.bindparam("lease", type_=sa.Interval))
    .returning(_dv.id, _dv.body, _dv.attempts))


class Unit(Protocol):
    """What raising an alert needs of a unit of work (UnitOfWork or ``OutboxOnly``)."""

    conn: Connection

    def emit_many(self, events: list[tuple[str, dict[str, Any], str | None]], *,
                  publish_now: bool = True) -> None: ...

    def send(self, actor: str, **kwargs: Any) -> None: ...


class OutboxOnly:
    """A Unit over a bare connection: events and messages are written to the outbox and
    published by the sweeper (for callers that hold no UnitOfWork)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def emit_many(self, events, *, publish_now: bool = True) -> None:
        outbox.add_events(self.conn, events)

    def send(self, actor: str, **kwargs: Any) -> None:
        outbox.add_message(self.conn, actor, kwargs)


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert to raise.

    Parameters:
      kind: what it is about (``balance_critical``, ``dead_letters``...).
      severity: info, warning or critical.
      subject: one line an operator reads.
      dedupe_key: at most one open alert per key.
      data: details; ``user_id`` in it makes the alert show in ``ballast wallet show``.
    """

    kind: str
    severity: str
    subject: str
    dedupe_key: str
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")


def raise_alerts(uow: Unit, alerts: Iterable[Alert]) -> dict[str, int]:
    """Open each alert unless one is open for its key (then its subject and data are
    refreshed and nothing is published).  Returns ``{dedupe_key: id}`` of the new ones."""
    items = distinct(alerts)
    if not items:
        return {}
    statement, params = upsert_statement(items)
    new = {r.key: r.id for r in uow.conn.execute(sql(statement), params) if r.inserted}
    announce_raised(uow, items, new)
    return new


def distinct(alerts: Iterable[Alert]) -> list[Alert]:
    """The last alert of each dedupe key (one statement may not touch a key twice)."""
    return list({a.dedupe_key: a for a in alerts}.values())


def upsert_statement(items: Sequence[Alert], transaction_from: str | None = None,
                     transaction_of: Sequence[int] | None = None) -> tuple[str, dict[str, Any]]:
    """One statement opening ``items`` (distinct keys): a new alert is inserted, an open
    one refreshed; it returns ``id, key, inserted`` (``xmax = 0`` only on a row this
    statement inserted, not on one it updated).  Parameters are prefixed ``al_`` so the
    statement can be a CTE of a bigger one (``uow.wallets.record``).

    ``transaction_from``, ``transaction_of``: as ``outbox.events_statement``'s (a relation
    of the bigger statement with the ledger transactions it posted, ``id`` and ``n``; for
    each alert the ``n`` of its transaction, default 1): each stored ``data.transaction_id``
    is set to its transaction's id, nothing is written for a transaction without a row."""
    statement = UPSERT_ALERTS
    if transaction_from is not None:
        t = transaction_from
        statement = _UPSERT_ALERTS.format(
            data=f"jsonb_set(x.d, '{{transaction_id}}', to_jsonb({t}.id))",
            join=f" JOIN {t} ON {t}.n = x.n")
    of = transaction_of if transaction_of is not None else [1] * len(items)
    # One JSON document rather than five arrays: the driver escaped an array of JSON texts
    # element by element, more client CPU than the upsert's own work on a deposit.
    rows = [{"k": a.kind, "s": a.severity, "subj": a.subject, "key": a.dedupe_key, "d": a.data,
             "n": n} for a, n in zip(items, of)]
    return statement, {"al_rows": json.dumps(rows, default=str)}


def announce_raised(uow: Unit, items: Sequence[Alert], new: dict[str, int]) -> None:
    """The ``alert.raised`` events (and webhook rows) of the alerts just opened."""
    if new:
        _announce(uow, "alert.raised", [
            {"alert_id": new[a.dedupe_key], "kind": a.kind, "severity": a.severity,
             "subject": a.subject, "dedupe_key": a.dedupe_key, "data": a.data}
            for a in items if a.dedupe_key in new
        ])


def raise_alert(uow: Unit, *, kind: str, severity: str, subject: str, dedupe_key: str,
                data: dict[str, Any] | None = None) -> int | None:
    """Open one alert (see ``raise_alerts``).  Its id, or None when one was already open."""
    return raise_alerts(uow, [Alert(kind, severity, subject, dedupe_key, data or {})]).get(dedupe_key)


def raise_alone(broker, alert: Alert, *, failed_event: str = "alert.raise_failed") -> None:
    """Open ``alert`` in a transaction of its own, published to ``broker`` after commit:
    for the broker's middleware, which hold no unit of work.  A failure (the database is
    down) is logged as ``failed_event``, never raised: the message's fate stays the
    middleware's."""
    try:
        with Transaction(broker) as tx:
            raise_alerts(tx, [alert])
            tx.commit()
    except Exception as exc:
        log.error(failed_event, kind=alert.kind, error=f"{type(exc).__name__}: {exc}"[:300])


def resolve_alerts(uow: Unit, keys: Sequence[str], note: str | None = None) -> list[int]:
    """Resolve the open alerts of ``keys`` (their condition cleared).  Ids of those resolved."""
    if not keys:
        return []
    if get_settings().alert_webhook_url:  # the deliveries too: resolved, then announced
        statement, params = resolve_statement(keys)
        rows = uow.conn.execute(sql(statement), params).all()
        announce_resolved(uow, rows, note)
        return [r.id for r in rows]
    # Resolved and announced in one statement: the database writes each alert.resolved
    # event (the same document ``announce_resolved`` writes) from the rows it resolved.
    statement, params = resolve_statement(keys)
    got = uow.conn.execute(sql(
        f"WITH rs AS ({statement}), ev AS (INSERT INTO outbox (kind, destination, routing_key, "
        "event_name, recipient, body) SELECT 'event', :rs_dest, 'alert.resolved', "
        "'alert.resolved', 'admin', jsonb_build_object('event', 'alert.resolved', "
        "'event_id', CAST(gen_random_uuid() AS text), 'occurred_at', CAST(:rs_now AS text), "
        "'recipient', 'admin', 'data', jsonb_build_object('alert_id', rs.id, 'kind', rs.kind, "
        "'severity', rs.severity, 'subject', rs.subject, 'dedupe_key', rs.dedupe_key, "
        "'data', rs.data, 'note', CAST(:rs_note AS text))) FROM rs ORDER BY rs.id "
        "RETURNING id, body) SELECT id, body FROM ev ORDER BY id"),
        {**params, "rs_dest": outbox.EVENTS_EXCHANGE, "rs_note": note,
         "rs_now": datetime.now(timezone.utc).isoformat()}).all()
    rows = [outbox.OutboxRow(r.id, "event", outbox.EVENTS_EXCHANGE, "alert.resolved", r.body)
            for r in got]
    if rows and len(rows) <= outbox.PUBLISH_INLINE_MAX and hasattr(uow, "publish_after_commit"):
        uow.publish_after_commit(rows)  # (more are left to the sweeper, as emit_many does)
    return [r.body["data"]["alert_id"] for r in rows]


def resolve_statement(keys: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """``resolve_alerts``' UPDATE as one statement (parameters prefixed ``rs_``, so it can
    be a CTE of a bigger one); it returns ``id, kind, severity, subject, dedupe_key, data``
    of each alert it resolved, for ``announce_resolved``."""
    return (
        "UPDATE alerts SET status = 'resolved', resolved_at = now(), updated_at = now() "
        "WHERE status <> 'resolved' AND dedupe_key = ANY(CAST(:rs_keys AS text[])) "
        "RETURNING id, kind, severity, subject, dedupe_key, data",
        {"rs_keys": list(keys)},
    )


def announce_resolved(uow: Unit, rows: Sequence[Any], note: str | None = None,
                      also: Sequence[tuple[str, dict[str, Any], str | None]] = ()) -> None:
    """The ``alert.resolved`` events (and webhook rows) of the alerts ``resolve_statement``
    resolved (rows with its columns), and the caller's other events ``also`` in the same
    statement."""
    if rows:
        _announce(uow, "alert.resolved", [
            {"alert_id": r.id, "kind": r.kind, "severity": r.severity, "subject": r.subject,
             "dedupe_key": r.dedupe_key, "data": r.data, "note": note}
            for r in rows
        ], also=also)
    elif also:
        uow.emit_many(list(also))


def resolve_alert(uow: Unit, dedupe_key: str, note: str | None = None) -> bool:
    """Resolve the open alert of ``dedupe_key``.  True if one was open."""
    return bool(resolve_alerts(uow, [dedupe_key], note))


def resolve_all_except(uow: Unit, prefix: str, still_true: Iterable[str]) -> int:
    """Resolve every open alert whose key starts with ``prefix`` and is not in ``still_true``."""
    keep = set(still_true)
    keys = [
        r.dedupe_key
        for r in uow.conn.execute(
            sa.select(_al.dedupe_key)
            .where(_al.status != _RESOLVED, _al.dedupe_key.like(_like_prefix(prefix))))
    ]
    return len(resolve_alerts(uow, [k for k in keys if k not in keep]))


def reconcile(uow: Unit, prefix: str, current: Iterable[Alert]) -> dict[str, int]:
    """The alert sweep's one way to state a condition: ``current`` are the alerts under
    ``prefix`` that hold now; they are opened (or refreshed), and every other open alert
    under ``prefix`` is resolved.  Returns ``{dedupe_key: id}`` of the new ones."""
    items = distinct(current)
    stray = [a.dedupe_key for a in items if not a.dedupe_key.startswith(prefix)]
    if stray:
        raise ValueError(f"alert keys {stray} are not under {prefix!r}")
    new = raise_alerts(uow, items)
    resolve_all_except(uow, prefix, [a.dedupe_key for a in items])
    return new


def _announce(uow: Unit, event: str, payloads: list[dict[str, Any]],
              also: Sequence[tuple[str, dict[str, Any], str | None]] = ()) -> None:
    """The events of raised/resolved alerts, and their webhook deliveries if configured
    (``also``: the caller's own events, written in the same statement)."""
    if also and len(payloads) + len(also) > outbox.PUBLISH_INLINE_MAX:
        uow.emit_many(list(also))  # the caller's own events are not held back with a bulk
        also = ()
    uow.emit_many([(event, p, "admin") for p in payloads] + list(also))
    if not get_settings().alert_webhook_url:
        return
    bodies = [{"event": event, "alert": p} for p in payloads]
    uow.conn.execute(
        INSERT_DELIVERIES,
        {"event": event, "ids": [p["alert_id"] for p in payloads],
         "bodies": [json.dumps(b, default=str) for b in bodies]},
    )
    uow.send("deliver_alert_webhooks", request_id=request_ids.fresh("webhook"))


# --- operator views ------------------------------------------------------------------------

def acknowledge(conn: Connection, alert_id: int, by: str) -> dict[str, Any]:
    """Record who acknowledged an open alert and when (it stays unresolved)."""
    row = conn.execute(
        sa.update(tables.alerts).where(_al.id == alert_id, _al.status == "open")
        .values(status="acknowledged", acknowledged_by=by, acknowledged_at=sa.func.now(),
                updated_at=sa.func.now())
        .returning(_al.id)).one_or_none()
    if row is None:
        current = get(conn, alert_id)
        raise Refused(f"alert {alert_id} is {current['status']}, not open")
    return get(conn, alert_id)


def get(conn: Connection, alert_id: int) -> dict[str, Any]:
    row = conn.execute(sa.select(tables.alerts).where(_al.id == alert_id)).one_or_none()
    if row is None:
        raise NotFound(f"no alert {alert_id}")
    return _row(row)


def listing(conn: Connection, open_only: bool = False, limit: int = 500,
            kind: str | None = None, user_id: str | None = None,
            offset: int = 0) -> list[dict[str, Any]]:
    """Alerts, newest first; ``open_only`` keeps open and acknowledged ones; ``offset`` pages."""
    stmt = sa.select(tables.alerts).order_by(_al.id.desc()).limit(limit).offset(offset)
    if open_only:
        stmt = stmt.where(_al.status != _RESOLVED)
    if kind is not None:
        stmt = stmt.where(_al.kind == kind)
    if user_id is not None:
        stmt = stmt.where(_USER_ID == user_id)
    rows = conn.execute(stmt)
    return [_row(r) for r in rows]


def _row(r) -> dict[str, Any]:
    return {
        "alert_id": r.id,
        "kind": r.kind,
        "severity": r.severity,
        "subject": r.subject,
        "status": r.status,
        "created_at": r.created_at.isoformat(),
        "dedupe_key": r.dedupe_key,
        "data": r.data,
        "acknowledged_by": r.acknowledged_by,
        "acknowledged_at": r.acknowledged_at.isoformat() if r.acknowledged_at else None,
        "resolved_at": r.resolved_at.isoformat() if r.resolved_at else None,
        "resolved_by": getattr(r, "resolved_by", None),
        "resolution_note": getattr(r, "resolution_note", None),
    }


def resolve_by_hand(uow: Unit, alert_id: int, by: str, note: str) -> dict[str, Any]:
    """An operator resolves an alert that no condition clears (a failed conversion, a failed
    settlement) once it is handled: who, when and how are kept; ``alert.resolved`` goes out."""
    row = uow.conn.execute(
        sa.update(tables.alerts).where(_al.id == alert_id, _al.status != _RESOLVED)
        .values(status="resolved", resolved_at=sa.func.now(), updated_at=sa.func.now(),
                resolved_by=by, resolution_note=note)
        .returning(_al.id, _al.kind, _al.severity, _al.subject, _al.dedupe_key, _al.data)
    ).one_or_none()
    if row is None:
        get(uow.conn, alert_id)  # NotFound for an unknown id
        raise Refused(f"alert {alert_id} is already resolved")
    _announce(uow, "alert.resolved", [
        {"alert_id": row.id, "kind": row.kind, "severity": row.severity, "subject": row.subject,
         "dedupe_key": row.dedupe_key, "data": row.data, "note": note, "resolved_by": by}])
    return get(uow.conn, alert_id)


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


# --- webhook delivery ------------------------------------------------------------------------

Post = Callable[[str, dict[str, Any], dict[str, str]], int]


def _http_post(url: str, body: dict[str, Any], headers: dict[str, str]) -> int:
    raw = json.dumps(body, separators=(",", ":"), default=str).encode()
    headers = {"Content-Type": "application/json", **headers,
               **webhook_headers(get_settings().alert_webhook_secret, raw)}
    return httpx.post(url, content=raw, headers=headers, timeout=WEBHOOK_TIMEOUT_S).status_code


def deliver_pending(engine: Engine, url: str | None = None, *, limit: int = 100,
                    post: Post = _http_post, sleep: Callable[[float], None] = time.sleep) -> dict[str, int]:
    """POST due deliveries in id order; a failing row backs off and the run stops there.

    Rows are claimed with a lease (no transaction is held during a POST), so
    concurrent deliverers never POST the same row at once.  A 2xx is delivered;
    anything else is retried inline, then by a later run with a growing delay.
    Receivers dedupe with the ``Idempotency-Key`` header (delivery is at least once).
    """
    url = url or get_settings().alert_webhook_url
    if not url:
        return {"delivered": 0, "failed": 0}
    with engine.begin() as conn:
        rows = conn.execute(
            CLAIM_DELIVERIES, {"lease": timedelta(seconds=WEBHOOK_LEASE_S), "limit": limit},
        ).all()
    rows.sort(key=lambda r: r.id)
    delivered = failed = 0
    for i, row in enumerate(rows):
        body = {**row.body, "delivery_id": row.id}
        headers = {"Idempotency-Key": f"ballast-alert-delivery-{row.id}"}
        attempts, error = 0, None
        for attempt in range(WEBHOOK_INLINE_ATTEMPTS):
            attempts += 1
            try:
                status = post(url, body, headers)
                if 200 <= status < 300:
                    error = None
                    break
                error = f"HTTP {status}"
            except Exception as exc:  # the receiver is down or slow: retry
                error = f"{type(exc).__name__}: {exc}"[:300]
            if attempt + 1 < WEBHOOK_INLINE_ATTEMPTS:
                sleep(WEBHOOK_INLINE_BACKOFF_S * 2**attempt)
        with engine.begin() as conn:
            if error is None:
                conn.execute(
                    sa.update(tables.alert_deliveries).where(_dv.id == row.id)
                    .values(status="delivered", delivered_at=sa.func.now(),
                            attempts=_dv.attempts + attempts, last_error=None))
                delivered += 1
                continue
            total = row.attempts + attempts
            delay = min(WEBHOOK_MAX_DELAY_S, 2 ** min(total, 20))
            conn.execute(
                sa.update(tables.alert_deliveries).where(_dv.id == row.id)
                .values(attempts=_dv.attempts + attempts, last_error=error,
                        next_attempt_at=sa.func.now() + timedelta(seconds=delay)))
            # The receiver is failing: hand the rest back for the next run, in order.
            rest = [r.id for r in rows[i + 1:]]
            if rest:
                conn.execute(
                    sa.update(tables.alert_deliveries)
                    .where(_dv.id == sa.any_(sa.bindparam("ids", rest,
                                                          type_=sa.ARRAY(sa.BigInteger))))
                    .values(next_attempt_at=sa.func.now() + timedelta(seconds=delay)))
        failed += 1
        log.warning("alert.webhook_failed", delivery_id=row.id, error=error, attempts=total)
        break
    return {"delivered": delivered, "failed": failed}


# --- conditions of the alert sweep (listed in services.conditions.CONDITIONS) -------------------

def dead_letters(uow) -> None:
    """Dead letters of a queue that nobody replayed or purged are an open alert naming the
    queue and the count.  Counted in the durable log (``dead_letters``, status ``dead``):
    reading the dead letters (which takes them off ``Q.XQ`` for a moment) or RabbitMQ
    expiring them does not resolve the alert; a replay or a purge does.  ``Q.XQ`` is read
    too, when the broker answers, for what only RabbitMQ dead-lettered (a nack when the dead
    letter itself could not be published, a quorum queue's delivery limit): the count is
    the larger of the two."""
    rows = uow.conn.execute(
        sa.select(_dl.queue, sa.func.count().label("n"),
                  sa.func.min(_dl.dead_lettered_at).label("oldest"))
        .where(_dl.status == _DEAD).group_by(_dl.queue).order_by(_dl.queue)).all()
    logged = {r.queue: (r.n, r.oldest) for r in rows}
    try:
        in_rabbitmq = rabbit.dead_letter_counts()
    except Exception as exc:  # the broker is down: the durable log still tells
        log.warning("alert.dead_letters_broker_unavailable", error=f"{type(exc).__name__}: {exc}"[:300])
        in_rabbitmq = {}
    raised = []
    for queue in sorted(set(logged) | {q for q, n in in_rabbitmq.items() if n > 0}):
        n_logged, oldest = logged.get(queue, (0, None))
        count = max(n_logged, in_rabbitmq.get(queue, 0))
        key = f"dead_letters:{queue}"
        raised.append(Alert("dead_letters", "warning",
                            f"{count} dead letter(s) of {queue} neither replayed nor purged",
                            key, {"queue": queue, "xq": f"{queue}.XQ", "count": count,
                                  "logged": n_logged, "in_xq": in_rabbitmq.get(queue),
                                  "oldest": oldest.isoformat() if oldest else None}))
    reconcile(uow, "dead_letters:", raised)


def alert_webhooks(uow) -> None:
    """Kick delivery of due webhook rows, give up on old ones, and say when it is stuck."""
    conn = uow.conn
    expired = conn.execute(
        sa.update(tables.alert_deliveries)
        .where(_dv.status == _PENDING,
               _dv.created_at < sa.func.now() - timedelta(hours=WEBHOOK_EXPIRE_H))
        .values(status="expired").returning(_dv.id)).all()
    state = conn.execute(
        sa.select(
            sa.func.count().filter(_dv.next_attempt_at <= sa.func.now()).label("due"),
            sa.func.count().label("pending"), sa.func.min(_dv.created_at).label("oldest"),
            sa.func.count().filter(
                _dv.created_at < sa.func.now() - timedelta(seconds=WEBHOOK_STUCK_S)).label("stuck"))
        .where(_dv.status == _PENDING)).one()
    if state.due and get_settings().alert_webhook_url:
        uow.send("deliver_alert_webhooks", request_id=request_ids.fresh("webhook", "sweep"))
    if state.stuck or expired:
        raise_alert(uow, kind="webhook_failing", severity="warning",
                    subject=f"alert webhook failing: {state.pending} undelivered, "
                            f"{len(expired)} given up", dedupe_key="webhook_failing",
                    data={"pending": state.pending, "expired": len(expired),
                          "oldest": state.oldest})
    elif state.pending == 0:
        resolve_alert(uow, "webhook_failing", note="every alert delivered")
