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

from sqlalchemy import Connection, Text, bindparam, cast, func, literal_column, select, text, update
from sqlalchemy.dialects.postgresql import insert

from infra.db.engine import get_engine
from infra.db.tables import any_text, dead_letters, jsonb
from infra.logs import get_logger
from infra.retention import parse_age

log = get_logger(__name__)

STATUSES = ("dead", "replayed", "purged")

_d = dead_letters.c
#: In the statement, not bound: the partial indexes of live records say ``status = 'dead'``.
_DEAD = literal_column("'dead'")

#: The deaths (message id, replays before death) of a replay, as two arrays, marked
#: replayed by ``:by`` (a death already marked replayed by a later death keeps its time).
MARK_REPLAYED = text(
    "UPDATE dead_letters d SET status = 'replayed', resolved_by = :by, "
    "resolved_at = coalesce(d.resolved_at, now()) "
    "FROM unnest(CAST(:ids AS text[]), CAST(:ns AS int[])) AS p(mid, n) "
    "WHERE d.message_id = p.mid AND d.replays = p.n AND (d.status = 'dead' "
    "OR (d.status = 'replayed' AND d.resolved_by IS NULL))")


def write(body: dict[str, Any], info: dict[str, Any]) -> None:
    """Record the dead letter ``body`` (the envelope published to ``Q.XQ``) with ``info``
    (``options.dead_letter``); a redelivered death of the same message updates its row.
    Raises what the write raised: the retry middleware and the envelope check retry the
    recording of a dead letter whose write failed for a transient cause (the database
    restarting)."""
    with get_engine().begin() as conn:
        record_in(conn, body, info)


def record_in(conn: Connection, body: dict[str, Any], info: dict[str, Any]) -> None:
    kwargs = body.get("kwargs") if isinstance(body.get("kwargs"), dict) else {}
    replays = _replays(body)
    # A death after a replay is a new record: the earlier one was replayed (by whom is
    # filled in by the replaying command, which may finish after the message died again).
    message_id = str(body.get("message_id") or "")
    conn.execute(
        update(dead_letters)
        .where(_d.message_id == message_id, _d.status == _DEAD, _d.replays < replays)
        .values(status="replayed", resolved_at=func.now()))
    ins = insert(dead_letters).values(
        message_id=message_id,
        queue=str(body.get("queue_name") or ""),
        actor=body.get("actor_name"),
        request_id=(str(kwargs.get("request_id"))[:256]
                    if kwargs.get("request_id") is not None else None),
        code=info.get("code"),
        error=info.get("error"),
        reason=str(info.get("reason") or "dead-lettered without a recorded reason"),
        traceback=info.get("traceback"),
        body=jsonb(json.dumps(body, default=str)),
        retries=int(info.get("retries") or 0),
        replays=replays,
    )
    conn.execute(ins.on_conflict_do_update(
        index_elements=[_d.message_id], index_where=_d.status == _DEAD,
        set_={"queue": ins.excluded.queue, "code": ins.excluded.code,
              "error": ins.excluded.error, "reason": ins.excluded.reason,
              "traceback": ins.excluded.traceback, "body": ins.excluded.body,
              "retries": ins.excluded.retries, "dead_lettered_at": func.now()}))


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
        MARK_REPLAYED,
        {"by": by, "ids": [p[0] for p in pairs], "ns": [p[1] for p in pairs]}).rowcount


def mark_purged(conn: Connection, queue: str, by: str) -> int:
    """Every live record of ``queue`` purged by ``by`` (kept as history).  Returns how many."""
    return conn.execute(
        update(dead_letters).where(_d.status == _DEAD, _d.queue == queue)
        .values(status="purged", resolved_by=by, resolved_at=func.now())).rowcount


def mark_discarded(conn: Connection, message_ids: Iterable[str], by: str,
                   queue: str | None = None) -> int:
    """The live records of these message ids (of ``queue``, or any) purged by ``by``."""
    stmt = (update(dead_letters)
            .where(_d.status == _DEAD, _d.message_id == any_text("ids", message_ids))
            .values(status="purged", resolved_by=by, resolved_at=func.now()))
    if queue is not None:
        stmt = stmt.where(_d.queue == queue)
    return conn.execute(stmt).rowcount


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
    stmt = (select(_d.queue, _d.message_id, _d.actor, _d.request_id, _d.reason, _d.retries,
                   _d.dead_lettered_at, _d.code, _d.status, _d.resolved_by, _d.resolved_at)
            .order_by(_d.dead_lettered_at.desc(), _d.id.desc()).limit(limit))
    for col, value in ((_d.queue, queue), (_d.actor, actor), (_d.code, code), (_d.status, status)):
        if value is not None:
            stmt = stmt.where(col == value)
    if since is not None:
        stmt = stmt.where(_d.dead_lettered_at >= since)
    if grep:
        escaped = grep.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_")
        g = bindparam("g", "%" + escaped + "%")
        stmt = stmt.where(_d.reason.ilike(g) | func.coalesce(_d.traceback, "").ilike(g)
                          | cast(_d.body, Text).ilike(g))
    rows = conn.execute(stmt).mappings().all()
    return [{"queue": r["queue"], "message_id": r["message_id"], "actor": r["actor"],
             "request_id": r["request_id"], "reason": r["reason"], "retries": r["retries"],
             "failed_at": r["dead_lettered_at"].isoformat(), "code": r["code"],
             "status": r["status"], "resolved_by": r["resolved_by"],
             "resolved_at": r["resolved_at"].isoformat() if r["resolved_at"] else None}
            for r in rows]


def find(conn: Connection, message_id: str) -> dict[str, Any] | None:
    """The newest record of ``message_id`` with its body and traceback."""
    r = conn.execute(select(dead_letters).where(_d.message_id == message_id)
                     .order_by(_d.id.desc()).limit(1)).mappings().first()
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
    return [dict(r) for r in conn.execute(
        select(_d.message_id, _d.queue, _d.body)
        .where(_d.status == _DEAD, _d.message_id == any_text("ids", message_ids))
        .order_by(_d.id)).mappings()]
