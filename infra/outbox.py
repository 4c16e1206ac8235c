"""The transactional outbox: next-step messages and events written with the effect.

Rows are written by the unit of work inside its transaction, published right
after commit, and swept up by ``sweep`` if a crash left them behind.  Nothing
is published for a transaction that rolled back, because its rows vanish
with it.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

import dramatiq
import pika
from dramatiq.common import dq_name
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from sqlalchemy import Connection, Engine, text

from infra.auth import sign_as_ballast
from infra.contract import EVENTS_EXCHANGE, spec_for
from infra.db.engine import delete_in_batches
from infra.logs import get_logger

log = get_logger(__name__)

#: Rows younger than this are left to the committing worker's own publish.
SWEEP_GRACE_S = 5  # s


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    kind: str
    destination: str
    routing_key: str
    body: dict[str, Any]


def add_message(conn: Connection, actor: str, kwargs: dict[str, Any],
                delay_ms: int | None = None) -> OutboxRow:
    """Write a command for ``actor`` (queue from the contract) to the outbox.

    With ``delay_ms`` it goes to the queue's ``.DQ`` with an eta that long after now,
    as ``broker.enqueue(message, delay=...)`` would send it (a row published late by
    the sweeper is simply due at once)."""
    spec = spec_for(actor)
    queue = spec.queue
    message = dramatiq.Message(
        queue_name=queue,
        actor_name=actor,
        args=(),
        kwargs=kwargs,
        options={},
    )
    if delay_ms is not None:
        queue = dq_name(spec.queue)
        message = message.copy(queue_name=queue,
                               options={"eta": message.message_timestamp + int(delay_ms)})
    body = message.asdict()
    return _insert(conn, "message", queue, queue, body, None, None)


def add_event(
    conn: Connection, name: str, data: dict[str, Any], recipient: str | None = None
) -> OutboxRow:
    """Write a domain event (CONTRACT.md "Events out") to the outbox."""
    body = {
        "event": name,
        "event_id": str(uuid.uuid4()),
        "occurred_at": datetime.now(timezone.utc).isoformat(),
        "recipient": recipient,
        "data": data,
    }
    return _insert(conn, "event", EVENTS_EXCHANGE, name, body, name, recipient)


def add_events(
    conn: Connection, events: Iterable[tuple[str, dict[str, Any], str | None]]
) -> list[OutboxRow]:
    """Write many events ``(name, data, recipient)`` in one statement (set-based steps)."""
    now = datetime.now(timezone.utc).isoformat()
    bodies = [
        {"event": name, "event_id": str(uuid.uuid4()), "occurred_at": now,
         "recipient": recipient, "data": data}
        for name, data, recipient in events
    ]
    if not bodies:
        return []
    ids = dict(conn.execute(
        text(
            "INSERT INTO outbox (kind, destination, routing_key, event_name, recipient, body) "
            "SELECT 'event', :dest, e.name, e.name, e.recipient, CAST(e.body AS jsonb) "
            "FROM unnest(CAST(:names AS text[]), CAST(:recipients AS text[]), "
            "CAST(:bodies AS text[])) WITH ORDINALITY AS e(name, recipient, body, n) "
            "ORDER BY e.n RETURNING body->>'event_id', id"
        ),
        {
            "dest": EVENTS_EXCHANGE,
            "names": [b["event"] for b in bodies],
            "recipients": [b["recipient"] for b in bodies],
            "bodies": [json.dumps(b, default=str) for b in bodies],
        },
    ).all())
    return [OutboxRow(ids[b["event_id"]], "event", EVENTS_EXCHANGE, b["event"], b) for b in bodies]


def add_events_select(
    conn: Connection, name: str, select_sql: str, params: dict[str, Any], *, return_max: int = 0
) -> tuple[int, list[OutboxRow]]:
    """One event ``name`` per row of ``select_sql`` (columns ``recipient`` text and ``data``
    jsonb), built and written by the database in one statement: nothing per event passes
    through Python, whatever the number of rows (a market's 100,000 notifications).

    Returns how many were written, and the rows themselves when there are at most
    ``return_max`` of them (for publishing right after commit; the rest wait for ``sweep``).
    """
    rows = conn.execute(
        text(
            f"WITH src AS ({select_sql}), ins AS ("
            "INSERT INTO outbox (kind, destination, routing_key, event_name, recipient, body) "
            "SELECT 'event', :_dest, :_name, :_name, src.recipient, jsonb_build_object("
            "'event', CAST(:_name AS text), 'event_id', CAST(gen_random_uuid() AS text), "
            "'occurred_at', CAST(:_now AS text), 'recipient', src.recipient, 'data', src.data) "
            "FROM src RETURNING id, routing_key, body) "
            "SELECT n.c AS n, ins.id, ins.routing_key, ins.body FROM (SELECT count(*) AS c FROM ins) n "
            "LEFT JOIN ins ON n.c <= :_max ORDER BY ins.id"
        ),
        {**params, "_dest": EVENTS_EXCHANGE, "_name": name, "_max": return_max,
         "_now": datetime.now(timezone.utc).isoformat()},
    ).all()
    count = int(rows[0].n)
    return count, [OutboxRow(r.id, "event", EVENTS_EXCHANGE, r.routing_key, r.body)
                   for r in rows if r.id is not None]


def _insert(conn, kind, destination, routing_key, body, event_name, recipient) -> OutboxRow:
    row_id = conn.execute(
        text(
            "INSERT INTO outbox (kind, destination, routing_key, event_name, recipient, body) "
            "VALUES (:k, :d, :r, :e, :rc, CAST(:b AS jsonb)) RETURNING id"
        ),
        {
            "k": kind,
            "d": destination,
            "r": routing_key,
            "e": event_name,
            "rc": recipient,
            "b": json.dumps(body, default=str),
        },
    ).scalar_one()
    return OutboxRow(row_id, kind, destination, routing_key, body)


class Publisher:
    """Publishes outbox rows with publisher confirms.

    Parameters:
      broker: the Dramatiq broker; messages go through ``broker.enqueue``
        (confirmed, mandatory), events to the ``ballast.events`` exchange on
        the broker's confirming channel.  With a non-RabbitMQ broker (unit
        tests) events are kept in ``self.published_events``.
    """

    def __init__(self, broker: dramatiq.Broker) -> None:
        self.broker = broker
        self.published_events: list[dict[str, Any]] = []
        self._exchange_declared = False

    def publish(self, row: OutboxRow) -> None:
        if row.kind == "message":
            # Signed now, as Ballast: a message a crash left for the sweeper is fresh too.
            self.broker.enqueue(sign_as_ballast(dramatiq.Message(**row.body)))
            return
        if not isinstance(self.broker, RabbitmqBroker):
            self.published_events.append(row.body)
            return
        try:
            self._publish_event(row)
        except _LOST:
            # An idle connection the broker dropped (missed heartbeats) fails once:
            # try again on a fresh one.  A duplicate is harmless (events are
            # at-least-once, deduplicated on event_id); a second failure is real.
            self._reset()
            log.info("outbox.reconnecting", outbox_id=row.id)
            try:
                self._publish_event(row)
            except _LOST:
                self._reset()
                raise

    def _publish_event(self, row: OutboxRow) -> None:
        channel = self.broker.channel
        if not self._exchange_declared:
            channel.exchange_declare(exchange=EVENTS_EXCHANGE, exchange_type="topic", durable=True)
            self._exchange_declared = True
        channel.basic_publish(
            exchange=EVENTS_EXCHANGE,
            routing_key=row.routing_key,
            body=json.dumps(row.body, default=str).encode(),
            properties=pika.BasicProperties(
                delivery_mode=2,
                content_type="application/json",
                message_id=row.body.get("event_id"),
            ),
        )

    def _reset(self) -> None:
        del self.broker.connection  # next use reconnects
        self._exchange_declared = False


#: What a lost or closed connection raises on the next publish.
_LOST = (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError,
         pika.exceptions.ChannelWrongStateError, pika.exceptions.ConnectionWrongStateError)


_publishers: dict[int, Publisher] = {}


def publisher_for(broker: dramatiq.Broker) -> Publisher:
    pub = _publishers.get(id(broker))
    if pub is None:
        pub = _publishers[id(broker)] = Publisher(broker)
    return pub


def publish_rows(engine: Engine, broker: dramatiq.Broker, rows: Iterable[OutboxRow]) -> int:
    """Publish rows just committed; mark what went out.  Failures are left to the sweeper."""
    rows = list(rows)
    if not rows:
        return 0
    pub = publisher_for(broker)
    done: list[int] = []
    try:
        for row in rows:
            pub.publish(row)
            done.append(row.id)
    except Exception as exc:  # the sweeper will retry; the effect is committed
        log.warning("outbox.publish_failed", error=_describe(exc), pending=len(rows) - len(done))
    finally:
        if done:
            _mark(engine, done)
    return len(done)


def _mark(engine: Engine, ids: list[int]) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE outbox SET published_at = now(), attempts = attempts + 1 WHERE id = ANY(:ids)"),
            {"ids": ids},
        )


def sweep(engine: Engine, broker: dramatiq.Broker, *, grace_s: float = SWEEP_GRACE_S,
          limit: int = 1000) -> int:
    """Publish rows a crash left unpublished.  Safe to run concurrently (SKIP LOCKED)."""
    pub = publisher_for(broker)
    published = 0
    started = time.monotonic()
    while True:
        with engine.begin() as conn:
            rows = [
                OutboxRow(r.id, r.kind, r.destination, r.routing_key, r.body)
                for r in conn.execute(
                    text(
                        "SELECT id, kind, destination, routing_key, body FROM outbox "
                        "WHERE published_at IS NULL "
                        "AND created_at < now() - make_interval(secs => :grace) "
                        "ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED"
                    ),
                    {"grace": grace_s, "limit": limit},
                )
            ]
            for row in rows:
                try:
                    pub.publish(row)
                except Exception as exc:
                    conn.execute(
                        text("UPDATE outbox SET attempts = attempts + 1, last_error = :e WHERE id = :id"),
                        {"e": _describe(exc)[:500], "id": row.id},
                    )
                    log.warning("outbox.sweep_failed", outbox_id=row.id, error=_describe(exc))
                    return published
                conn.execute(
                    text("UPDATE outbox SET published_at = now(), attempts = attempts + 1 WHERE id = :id"),
                    {"id": row.id},
                )
                published += 1
        if len(rows) < limit or time.monotonic() - started > 30:
            break
    if published:
        log.info("outbox.swept", published=published)
    return published


def _describe(exc: BaseException) -> str:
    """The error's class and message: pika's connection errors often have no message."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc)


def pending_count(conn: Connection) -> int:
    return conn.execute(text("SELECT count(*) FROM outbox WHERE published_at IS NULL")).scalar_one()


def oldest_pending(conn: Connection) -> datetime | None:
    return conn.execute(text("SELECT min(created_at) FROM outbox WHERE published_at IS NULL")).scalar_one()


def prune(engine: Engine, older_than_s: float, *, batch: int = 10_000) -> int:
    """Delete rows published more than ``older_than_s`` seconds ago, ``batch`` rows per
    transaction (never an unpublished row).  Returns how many."""
    deleted = delete_in_batches(
        engine,
        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE published_at IS NOT NULL "
        "AND published_at < now() - make_interval(secs => :age) "
        "ORDER BY published_at LIMIT :batch FOR UPDATE SKIP LOCKED)",
        {"age": older_than_s}, batch)
    if deleted:
        log.info("outbox.pruned", rows=deleted, older_than_s=older_than_s)
    return deleted


def prunable(conn: Connection, older_than_s: float) -> int:
    return conn.execute(
        text("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL "
             "AND published_at < now() - make_interval(secs => :age)"),
        {"age": older_than_s},
    ).scalar_one()
