"""The one alert store (SPEC §6): one open alert per dedupe key.

Raised and resolved alerts become ``alert.raised`` / ``alert.resolved``
events through the unit of work's outbox, so they go out only if the
transaction that raised them commits.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from sqlalchemy import Connection, text

from domain.errors import NotFound, Refused
from infra.uow import UnitOfWork

SEVERITIES = ("info", "warning", "critical")


def raise_alert(
    uow: UnitOfWork,
    *,
    kind: str,
    severity: str,
    subject: str,
    dedupe_key: str,
    data: dict[str, Any] | None = None,
) -> int | None:
    """Open an alert unless one is already open for ``dedupe_key``.

    Returns the new alert's id, or None when an open one exists (its data
    and ``updated_at`` are refreshed, no second event is published).
    """
    if severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}")
    payload = json.dumps(data or {}, default=str)
    new_id = uow.conn.execute(
        text(
            "INSERT INTO alerts (kind, severity, subject, dedupe_key, data) "
            "VALUES (:k, :s, :subj, :key, CAST(:d AS jsonb)) "
            "ON CONFLICT (dedupe_key) WHERE status <> 'resolved' DO NOTHING RETURNING id"
        ),
        {"k": kind, "s": severity, "subj": subject, "key": dedupe_key, "d": payload},
    ).scalar_one_or_none()
    if new_id is None:
        uow.conn.execute(
            text(
                "UPDATE alerts SET data = CAST(:d AS jsonb), updated_at = now() "
                "WHERE dedupe_key = :key AND status <> 'resolved'"
            ),
            {"key": dedupe_key, "d": payload},
        )
        return None
    uow.emit(
        "alert.raised",
        {"alert_id": new_id, "kind": kind, "severity": severity, "subject": subject,
         "dedupe_key": dedupe_key, "data": data or {}},
        recipient="admin",
    )
    return new_id


def resolve_alert(uow: UnitOfWork, dedupe_key: str, note: str | None = None) -> bool:
    """Resolve the open alert of ``dedupe_key`` (the condition cleared). True if one was open."""
    row = uow.conn.execute(
        text(
            "UPDATE alerts SET status = 'resolved', resolved_at = now(), updated_at = now() "
            "WHERE dedupe_key = :key AND status <> 'resolved' RETURNING id, kind, subject"
        ),
        {"key": dedupe_key},
    ).one_or_none()
    if row is None:
        return False
    uow.emit(
        "alert.resolved",
        {"alert_id": row.id, "kind": row.kind, "subject": row.subject, "dedupe_key": dedupe_key,
         "note": note},
        recipient="admin",
    )
    return True


def resolve_all_except(uow: UnitOfWork, prefix: str, still_true: Iterable[str]) -> int:
    """Resolve every open alert whose key starts with ``prefix`` and is not in ``still_true``."""
    keep = set(still_true)
    keys = [
        r.dedupe_key
        for r in uow.conn.execute(
            text("SELECT dedupe_key FROM alerts WHERE status <> 'resolved' AND dedupe_key LIKE :p"),
            {"p": prefix.replace("%", "\\%").replace("_", "\\_") + "%"},
        )
    ]
    return sum(resolve_alert(uow, k) for k in keys if k not in keep)


def acknowledge(conn: Connection, alert_id: int, by: str) -> dict[str, Any]:
    """Record who acknowledged an open alert and when."""
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


def listing(conn: Connection, open_only: bool = False, limit: int = 500) -> list[dict[str, Any]]:
    rows = conn.execute(
        text(
            "SELECT * FROM alerts WHERE (NOT :open_only OR status <> 'resolved') "
            "ORDER BY id DESC LIMIT :limit"
        ),
        {"open_only": open_only, "limit": limit},
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
    }
