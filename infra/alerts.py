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
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, Sequence

import httpx
from sqlalchemy import Connection, Engine, text

from domain.errors import NotFound, Refused
from infra import outbox
from infra.db.engine import sql
from infra.logs import get_logger
from infra.settings import get_settings

log = get_logger(__name__)

SEVERITIES = ("info", "warning", "critical")

#: Up to this many alert events are published right after commit; more are left to
#: the outbox sweeper so a bulk step is not held up by thousands of publishes.
PUBLISH_NOW_MAX = 100

WEBHOOK_TIMEOUT_S = 5.0  # s, per POST
WEBHOOK_INLINE_ATTEMPTS = 3  # POSTs per delivery run before the row waits for the next run
WEBHOOK_INLINE_BACKOFF_S = 0.5  # s, doubled after each inline attempt
WEBHOOK_LEASE_S = 120  # s a claimed delivery is hidden from other deliverers
WEBHOOK_MAX_DELAY_S = 600  # s, cap of the backoff between delivery runs
WEBHOOK_EXPIRE_H = 24  # h after which an undelivered row is given up (and an alert says so)
WEBHOOK_STUCK_S = 300  # s an undelivered row may wait before ``webhook_failing`` is raised


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


def upsert_statement(items: Sequence[Alert]) -> tuple[str, dict[str, Any]]:
    """One statement opening ``items`` (distinct keys): a new alert is inserted, an open
    one refreshed; it returns ``id, key, inserted`` (``xmax = 0`` only on a row this
    statement inserted, not on one it updated).  Parameters are prefixed ``al_`` so the
    statement can be a CTE of a bigger one (``guard.record``)."""
    return (
        "INSERT INTO alerts (kind, severity, subject, dedupe_key, data) "
        "SELECT x.k, x.s, x.subj, x.key, CAST(x.d AS jsonb) FROM unnest("
        "CAST(:al_k AS text[]), CAST(:al_s AS text[]), CAST(:al_subj AS text[]), "
        "CAST(:al_key AS text[]), CAST(:al_d AS text[])) AS x(k, s, subj, key, d) "
        "ON CONFLICT (dedupe_key) WHERE status <> 'resolved' DO UPDATE SET "
        "subject = EXCLUDED.subject, data = EXCLUDED.data, updated_at = now() "
        "RETURNING id, dedupe_key AS key, (xmax = 0) AS inserted",
        {
            "al_k": [a.kind for a in items],
            "al_s": [a.severity for a in items],
            "al_subj": [a.subject for a in items],
            "al_key": [a.dedupe_key for a in items],
            "al_d": [json.dumps(a.data, default=str) for a in items],
        },
    )


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


def resolve_alerts(uow: Unit, keys: Sequence[str], note: str | None = None) -> list[int]:
    """Resolve the open alerts of ``keys`` (their condition cleared).  Ids of those resolved."""
    if not keys:
        return []
    rows = uow.conn.execute(
        sql(
            "UPDATE alerts SET status = 'resolved', resolved_at = now(), updated_at = now() "
            "WHERE status <> 'resolved' AND dedupe_key = ANY(CAST(:keys AS text[])) "
            "RETURNING id, kind, severity, subject, dedupe_key, data"
        ),
        {"keys": list(keys)},
    ).all()
    if rows:
        _announce(uow, "alert.resolved", [
            {"alert_id": r.id, "kind": r.kind, "severity": r.severity, "subject": r.subject,
             "dedupe_key": r.dedupe_key, "data": r.data, "note": note}
            for r in rows
        ])
    return [r.id for r in rows]


def resolve_alert(uow: Unit, dedupe_key: str, note: str | None = None) -> bool:
    """Resolve the open alert of ``dedupe_key``.  True if one was open."""
    return bool(resolve_alerts(uow, [dedupe_key], note))


def resolve_all_except(uow: Unit, prefix: str, still_true: Iterable[str]) -> int:
    """Resolve every open alert whose key starts with ``prefix`` and is not in ``still_true``."""
    keep = set(still_true)
    keys = [
        r.dedupe_key
        for r in uow.conn.execute(
            text("SELECT dedupe_key FROM alerts WHERE status <> 'resolved' AND dedupe_key LIKE :p"),
            {"p": _like_prefix(prefix)},
        )
    ]
    return len(resolve_alerts(uow, [k for k in keys if k not in keep]))


def _announce(uow: Unit, event: str, payloads: list[dict[str, Any]]) -> None:
    """The events of raised/resolved alerts, and their webhook deliveries if configured."""
    uow.emit_many([(event, p, "admin") for p in payloads], publish_now=len(payloads) <= PUBLISH_NOW_MAX)
    if not get_settings().alert_webhook_url:
        return
    bodies = [{"event": event, "alert": p} for p in payloads]
    uow.conn.execute(
        text(
            "INSERT INTO alert_deliveries (alert_id, event, body) "
            "SELECT x.a, :event, CAST(x.b AS jsonb) FROM unnest(CAST(:ids AS bigint[]), "
            "CAST(:bodies AS text[])) AS x(a, b)"
        ),
        {"event": event, "ids": [p["alert_id"] for p in payloads],
         "bodies": [json.dumps(b, default=str) for b in bodies]},
    )
    uow.send("deliver_alert_webhooks", request_id=f"webhook:{uuid.uuid4()}")


# --- operator views ------------------------------------------------------------------------

def acknowledge(conn: Connection, alert_id: int, by: str) -> dict[str, Any]:
    """Record who acknowledged an open alert and when (it stays unresolved)."""
    row = conn.execute(
        text(
            "UPDATE alerts SET status = 'acknowledged', acknowledged_by = :by, "
            "acknowledged_at = now(), updated_at = now() "
            "WHERE id = :id AND status = 'open' RETURNING id"
        ),
        {"id": alert_id, "by": by},
    ).one_or_none()
    if row is None:
        current = get(conn, alert_id)
        raise Refused(f"alert {alert_id} is {current['status']}, not open")
    return get(conn, alert_id)


def get(conn: Connection, alert_id: int) -> dict[str, Any]:
    row = conn.execute(text("SELECT * FROM alerts WHERE id = :id"), {"id": alert_id}).one_or_none()
    if row is None:
        raise NotFound(f"no alert {alert_id}")
    return _row(row)


def listing(conn: Connection, open_only: bool = False, limit: int = 500,
            kind: str | None = None, user_id: str | None = None,
            offset: int = 0) -> list[dict[str, Any]]:
    """Alerts, newest first; ``open_only`` keeps open and acknowledged ones; ``offset`` pages."""
    rows = conn.execute(
        text(
            "SELECT * FROM alerts WHERE (NOT :open_only OR status <> 'resolved') "
            "AND (CAST(:kind AS text) IS NULL OR kind = :kind) "
            "AND (CAST(:user AS text) IS NULL OR data->>'user_id' = :user) "
            "ORDER BY id DESC LIMIT :limit OFFSET :offset"
        ),
        {"open_only": open_only, "limit": limit, "kind": kind, "user": user_id, "offset": offset},
    )
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
        text("UPDATE alerts SET status = 'resolved', resolved_at = now(), updated_at = now(), "
             "resolved_by = :by, resolution_note = :note WHERE id = :id AND status <> 'resolved' "
             "RETURNING id, kind, severity, subject, dedupe_key, data"),
        {"id": alert_id, "by": by, "note": note},
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
    from infra.auth import webhook_headers

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
            text(
                "UPDATE alert_deliveries SET next_attempt_at = now() + make_interval(secs => :lease) "
                "WHERE id IN (SELECT id FROM alert_deliveries WHERE status = 'pending' "
                "AND next_attempt_at <= now() ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED) "
                "RETURNING id, body, attempts"
            ),
            {"lease": WEBHOOK_LEASE_S, "limit": limit},
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
                    text("UPDATE alert_deliveries SET status = 'delivered', delivered_at = now(), "
                         "attempts = attempts + :n, last_error = NULL WHERE id = :id"),
                    {"n": attempts, "id": row.id},
                )
                delivered += 1
                continue
            total = row.attempts + attempts
            delay = min(WEBHOOK_MAX_DELAY_S, 2 ** min(total, 20))
            conn.execute(
                text("UPDATE alert_deliveries SET attempts = attempts + :n, last_error = :e, "
                     "next_attempt_at = now() + make_interval(secs => :d) WHERE id = :id"),
                {"n": attempts, "e": error, "d": delay, "id": row.id},
            )
            # The receiver is failing: hand the rest back for the next run, in order.
            rest = [r.id for r in rows[i + 1:]]
            if rest:
                conn.execute(
                    text("UPDATE alert_deliveries SET next_attempt_at = now() + make_interval(secs => :d) "
                         "WHERE id = ANY(:ids)"),
                    {"d": delay, "ids": rest},
                )
        failed += 1
        log.warning("alert.webhook_failed", delivery_id=row.id, error=error, attempts=total)
        break
    return {"delivered": delivered, "failed": failed}
