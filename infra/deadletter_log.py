"""The durable log of dead letters (table ``dead_letters``).

Every dead letter is recorded here when it is dead-lettered — queue, actor, message id,
reason, code, traceback, the whole message body and its retries — so nothing is lost
when RabbitMQ expires its copy in ``Q.XQ`` (``x-message-ttl``).  Replays and purges are
recorded on the same row: who, when, and the status (``dead`` → ``replayed`` or
``purged``).  Recording never stops a dead letter from being dead-lettered: a failure to
write is logged and the message still goes to ``Q.XQ`` — except that a worker's dead letter
whose write failed for a transient cause (the database restarting) is held back and its
recording retried first, within the retry budget (``infra/middleware/deadletters.py``).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from sqlalchemy import Connection, text

from infra.db.engine import get_engine
from infra.logs import get_logger
from infra.retention import parse_age

log = get_logger(__name__)

STATUSES = ("dead", "replayed", "purged")


def record(body: dict[str, Any], info: dict[str, Any]) -> None:
    """Record the dead letter ``body`` (the envelope published to ``Q.XQ``) with ``info``
    (``options.dead_letter``).  A redelivered death of the same message updates its row."""
    try:
        write(body, info)
    except Exception as exc:  # the dead letter itself must still reach Q.XQ
        log.error("dead_letter.record_failed", error=f"{type(exc).__name__}: {exc}"[:300])


def write(body: dict[str, Any], info: dict[str, Any]) -> None:
    """``record``, raising what the write raised: the retry middleware retries the recording
    of a dead letter whose write failed for a transient cause (the database restarting)."""
    with get_engine().begin() as conn:
        record_in(conn, body, info)


def record_in(conn: Connection, body: dict[str, Any], info: dict[str, Any]) -> None:
    kwargs = body.get("kwargs") if isinstance(body.get("kwargs"), dict) else {}
    replays = _replays(body)
    # A death after a replay is a new record: the earlier one was replayed (by whom is
    # filled in by the replaying command, which may finish after the message died again).
    conn.execute(
        text("UPDATE dead_letters SET status = 'replayed', resolved_at = now() "
             "WHERE message_id = :mid AND status = 'dead' AND replays < :n"),
        {"mid": str(body.get("message_id") or ""), "n": replays})
    conn.execute(
        text(
            "INSERT INTO dead_letters (message_id, queue, actor, request_id, code, error, reason, "
            "traceback, body, retries, replays) VALUES (:mid, :q, :a, :rid, :code, :err, :reason, "
            ":tb, CAST(:body AS jsonb), :retries, :replays) "
            "ON CONFLICT (message_id) WHERE status = 'dead' DO UPDATE SET "
            "queue = EXCLUDED.queue, code = EXCLUDED.code, error = EXCLUDED.error, "
            "reason = EXCLUDED.reason, traceback = EXCLUDED.traceback, body = EXCLUDED.body, "
            "retries = EXCLUDED.retries, dead_lettered_at = now()"
        ),
        {
            "mid": str(body.get("message_id") or ""),
            "q": str(body.get("queue_name") or ""),
            "a": body.get("actor_name"),
            "rid": str(kwargs.get("request_id"))[:256] if kwargs.get("request_id") is not None else None,
            "code": info.get("code"),
            "err": info.get("error"),
            "reason": str(info.get("reason") or "dead-lettered without a recorded reason"),
            "tb": info.get("traceback"),
            "body": json.dumps(body, default=str),
            "retries": int(info.get("retries") or 0),
            "replays": replays,
        },
    )


def _replays(body: dict[str, Any]) -> int:
    try:
        return int((body.get("options") or {}).get("replays") or 0)
    except (TypeError, ValueError):
        return 0


def mark_replayed(conn: Connection, letters: Iterable[dict[str, Any]], by: str) -> int:
    """Mark the deaths these bodies (as read from ``Q.XQ``, before replay) stand for as
    replayed by ``by``."""
    pairs = [(str(b.get("message_id") or ""), _replays(b)) for b in letters]
    if not pairs:
        return 0
    return conn.execute(
        text("UPDATE dead_letters d SET status = 'replayed', resolved_by = :by, "
             "resolved_at = coalesce(d.resolved_at, now()) "
             "FROM unnest(CAST(:ids AS text[]), CAST(:ns AS int[])) AS p(mid, n) "
             "WHERE d.message_id = p.mid AND d.replays = p.n AND (d.status = 'dead' "
             "OR (d.status = 'replayed' AND d.resolved_by IS NULL))"),
        {"by": by, "ids": [p[0] for p in pairs], "ns": [p[1] for p in pairs]}).rowcount


def mark_purged(conn: Connection, queue: str, by: str) -> int:
    """Every live record of ``queue`` purged by ``by`` (kept as history).  Returns how many."""
    return conn.execute(
        text("UPDATE dead_letters SET status = 'purged', resolved_by = :by, resolved_at = now() "
             "WHERE status = 'dead' AND queue = :q"), {"by": by, "q": queue}).rowcount


def mark_discarded(conn: Connection, message_ids: Iterable[str], by: str,
                   queue: str | None = None) -> int:
    """The live records of these message ids (of ``queue``, or any) purged by ``by``."""
    return conn.execute(
        text("UPDATE dead_letters SET status = 'purged', resolved_by = :by, resolved_at = now() "
             "WHERE status = 'dead' AND message_id = ANY(:ids) "
             "AND (CAST(:q AS text) IS NULL OR queue = :q)"),
        {"by": by, "ids": list(message_ids), "q": queue}).rowcount


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """``--since``: an ISO 8601 time (UTC when it has no offset) or an age like ``90m``,
    ``2h``, ``7d``."""
    now = now or datetime.now(timezone.utc)
    age = parse_age(value)
    if age is not None:
        return now - timedelta(seconds=age)
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"--since {value!r}: an ISO 8601 time or an age like 90m, 2h, 7d") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def history(conn: Connection, *, queue: str | None = None, actor: str | None = None,
            code: str | None = None, since: datetime | None = None, grep: str | None = None,
            status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Recorded dead letters, newest first, as ``dlq list`` rows plus their log columns."""
    where, params = ["true"], {"limit": limit}
    for col, value in (("queue", queue), ("actor", actor), ("code", code), ("status", status)):
        if value is not None:
            where.append(f"{col} = :{col}")
            params[col] = value
    if since is not None:
        where.append("dead_lettered_at >= :since")
        params["since"] = since
    if grep:
        where.append("(reason ILIKE :g OR coalesce(traceback, '') ILIKE :g OR body::text ILIKE :g)")
        params["g"] = "%" + grep.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_") + "%"
    rows = conn.execute(text(
        "SELECT queue, message_id, actor, request_id, reason, retries, dead_lettered_at, code, "
        "status, resolved_by, resolved_at FROM dead_letters "
        f"WHERE {' AND '.join(where)} ORDER BY dead_lettered_at DESC, id DESC LIMIT :limit"),
        params).mappings().all()
    return [{"queue": r["queue"], "message_id": r["message_id"], "actor": r["actor"],
             "request_id": r["request_id"], "reason": r["reason"], "retries": r["retries"],
             "failed_at": r["dead_lettered_at"].isoformat(), "code": r["code"],
             "status": r["status"], "resolved_by": r["resolved_by"],
             "resolved_at": r["resolved_at"].isoformat() if r["resolved_at"] else None}
            for r in rows]


def find(conn: Connection, message_id: str) -> dict[str, Any] | None:
    """The newest record of ``message_id`` with its body and traceback."""
    r = conn.execute(text(
        "SELECT * FROM dead_letters WHERE message_id = :m ORDER BY id DESC LIMIT 1"),
        {"m": message_id}).mappings().first()
    return dict(r) if r else None


def matches(summary: dict[str, Any], body: dict[str, Any], *, actor: str | None = None,
            code: str | None = None, since: datetime | None = None,
            grep: str | None = None) -> bool:
    """The same filters as ``history``, for a dead letter read from RabbitMQ."""
    if actor is not None and summary.get("actor") != actor:
        return False
    if code is not None and summary.get("code") != code:
        return False
    if since is not None:
        try:
            at = datetime.fromisoformat(summary.get("failed_at") or "")
        except ValueError:
            return False
        if at < since:
            return False
    if grep:
        haystack = (summary.get("reason") or "") + json.dumps(body, default=str)
        if grep.lower() not in haystack.lower():
            return False
    return True


def live(conn: Connection, message_ids: Iterable[str]) -> list[dict[str, Any]]:
    """The live (``dead``) records of these message ids: ``{"message_id", "queue", "body"}``."""
    return [dict(r) for r in conn.execute(text(
        "SELECT message_id, queue, body FROM dead_letters "
        "WHERE status = 'dead' AND message_id = ANY(:ids) ORDER BY id"),
        {"ids": list(message_ids)}).mappings()]
