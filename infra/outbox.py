"""The transactional outbox: next-step messages and events written with the effect.

Rows are written by the unit of work inside its transaction, published right
after commit, and swept up by ``sweep`` if a crash left them behind.  Nothing
is published for a transaction that rolled back, because its rows vanish
with it.

In a worker process the rows of every commit are handed to the process's ``Relay``
(one thread): it publishes what the worker threads committed meanwhile in one batch,
waits for the broker's confirms of the whole batch at once, and marks the confirmed
rows in one UPDATE, so a worker thread never waits on a publish or commits twice.
Outside workers (the CLI, tests) ``UnitOfWork.commit`` publishes inline, as before.
"""

from __future__ import annotations

import collections
import json
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Sequence

import dramatiq
import pika
from dramatiq.common import dq_name, q_name
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from sqlalchemy import (ARRAY, BigInteger, Connection, Engine, Interval, Text, any_, bindparam,
                        cast, func, insert, select, text, update)
from sqlalchemy.dialects.postgresql import JSONB

from infra.auth import sign_as_ballast
from infra.contract import EVENTS_EXCHANGE, spec_for
from infra.db.engine import delete_in_batches, pg_array
from infra.db.tables import outbox
from infra.logs import get_logger

log = get_logger(__name__)

#: The one rule of when to publish inline: a bulk emission (``Transaction.emit_many``,
#: ``emit_select``) of at most this many rows is published right after its commit; a
#: bigger one is written and left to ``sweep``, so no step holds its message while it
#: publishes thousands of events.  Single ``send``/``emit`` rows are always published.
PUBLISH_INLINE_MAX = 1000

#: Rows younger than this are left to the committing worker's own publish.
SWEEP_GRACE_S = 5  # s

# --- statements (built once: they run on every command's commit) ---------------------------

_o = outbox.c

#: One row; the body is JSON text serialized by the caller (``default=str``), cast by
#: PostgreSQL.
INSERT_ROW = (
    insert(outbox)
    .values(kind=bindparam("k"), destination=bindparam("d"), routing_key=bindparam("r"),
            event_name=bindparam("e"), recipient=bindparam("rc"),
            body=cast(bindparam("b", type_=Text), JSONB))
    .returning(_o.id))

#: Events from three arrays (name, recipient, body as JSON text), in array order; returns
#: ``(event_id, id)``.
ADD_EVENTS = text(
    "INSERT INTO outbox (kind, destination, routing_key, event_name, recipient, body) "
    "SELECT 'event', :dest, e.body->>'event', e.body->>'event', e.body->>'recipient', "
    "e.body FROM jsonb_array_elements(CAST(:bodies AS jsonb)) WITH ORDINALITY AS e(body, n) "
    "ORDER BY e.n RETURNING body->>'event_id', id")

#: ``ADD_EVENTS`` as a statement to run inside a bigger one (a CTE), parameters prefixed
#: ``ev_``; returns ``id, key`` (the event id).
EVENTS_STATEMENT = (
    "INSERT INTO outbox (kind, destination, routing_key, event_name, recipient, body) "
    "SELECT 'event', :ev_dest, e.body->>'event', e.body->>'event', e.body->>'recipient', "
    "e.body FROM jsonb_array_elements(CAST(:ev_bodies AS jsonb)) WITH ORDINALITY AS e(body, n) "
    "ORDER BY e.n RETURNING id, body->>'event_id' AS key")

#: One event per row of the caller's ``{select}`` (columns ``recipient`` and ``data``),
#: built by the database; returns the count and, up to ``:_max`` of them, the rows.
ADD_EVENTS_SELECT = (
    "WITH src AS ({select}), ins AS ("
    "INSERT INTO outbox (kind, destination, routing_key, event_name, recipient, body) "
    "SELECT 'event', :_dest, :_name, :_name, src.recipient, jsonb_build_object("
    "'event', CAST(:_name AS text), 'event_id', CAST(CAST(overlay(overlay(md5("
    "CAST(:_seed AS text) || ':' || src._n) PLACING '3' FROM 13) PLACING '8' FROM 17) "
    "AS uuid) AS text), "
    "'occurred_at', CAST(:_now AS text), 'recipient', src.recipient, 'data', src.data) "
    "FROM (SELECT s.*, row_number() OVER () AS _n FROM src s) src RETURNING id) "
    "SELECT count(*) AS n, CASE WHEN count(*) <= :_max THEN "
    "COALESCE(array_agg(id ORDER BY id), '{{}}') END AS ids FROM ins")

MARK_PUBLISHED = (
    update(outbox)
    .where(_o.id == any_(bindparam("ids", type_=ARRAY(BigInteger))))
    .values(published_at=func.now(), attempts=_o.attempts + 1))

#: Unpublished rows older than the grace, oldest first; rows another sweeper holds are
#: skipped.
SWEEP_BATCH = (
    select(_o.id, _o.kind, _o.destination, _o.routing_key, _o.body)
    .where(_o.published_at.is_(None),
           _o.created_at < func.now() - bindparam("grace", type_=Interval))
    .order_by(_o.id).limit(bindparam("limit")).with_for_update(skip_locked=True))

#: One batch of rows published before ``:age`` seconds ago (never an unpublished row).
PRUNE_BATCH = (
    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE published_at IS NOT NULL "
    "AND published_at < now() - make_interval(secs => :age) "
    "ORDER BY published_at LIMIT :batch FOR UPDATE SKIP LOCKED)")


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
    queue, body = _message(actor, kwargs, delay_ms)
    return _insert(conn, "message", queue, queue, body, None, None)


def message_statement(actor: str, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any], OutboxRow]:
    """``add_message`` as a statement to run inside a bigger one (a CTE): its SQL (returning
    ``id``), its parameters (prefixed ``msg_``) and the row to publish, whose ``id`` is 0
    until the caller sets what the statement returned (``dataclasses.replace``)."""
    queue, body = _message(actor, kwargs, None)
    return ("INSERT INTO outbox (kind, destination, routing_key, event_name, recipient, body) "
            "VALUES ('message', :msg_q, :msg_q, NULL, NULL, CAST(:msg_b AS jsonb)) RETURNING id",
            {"msg_q": queue, "msg_b": json.dumps(body, default=str)},
            OutboxRow(0, "message", queue, queue, body))


def _message(actor: str, kwargs: dict[str, Any], delay_ms: int | None) -> tuple[str, dict[str, Any]]:
    """The queue and body of a command for ``actor`` (``add_message``)."""
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
    return queue, message.asdict()


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
        ADD_EVENTS,
        # One JSON document rather than three text arrays: an array of JSON texts is
        # escaped element by element by the driver, which cost more than the insert.
        {"dest": EVENTS_EXCHANGE, "bodies": json.dumps(bodies, default=str)},
    ).all())
    return [OutboxRow(ids[b["event_id"]], "event", EVENTS_EXCHANGE, b["event"], b) for b in bodies]


def events_statement(
    events: Iterable[tuple[str, dict[str, Any], str | None]],
    transaction_from: str | None = None,
    transaction_of: Sequence[int] | None = None,
) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """``add_events`` as a statement to run inside a bigger one (a CTE): its SQL (returning
    ``id`` and ``key``, the event id), its parameters (prefixed ``ev_``) and the bodies;
    ``rows_of`` turns what it returned into OutboxRows.

    ``transaction_from``: the name of a relation of the bigger statement with columns
    ``id`` and ``n``, the ledger transactions posted by that statement (``n``: 1, 2, … in
    the order of its batch); ``transaction_of``: for each event, the ``n`` of its
    transaction (default: all 1).  Each stored body's ``data.transaction_id`` is set to
    its transaction's id, and an event whose transaction has no row is not written.  The
    caller sets the same ids in the bodies (``data["transaction_id"]``) before they are
    published."""
    now = datetime.now(timezone.utc).isoformat()
    bodies = [
        {"event": name, "event_id": str(uuid.uuid4()), "occurred_at": now,
         "recipient": recipient, "data": data}
        for name, data, recipient in events
    ]
    params = {"ev_dest": EVENTS_EXCHANGE, "ev_bodies": json.dumps(bodies, default=str)}
    if transaction_from is None:
        return EVENTS_STATEMENT, params, bodies
    t = transaction_from
    params["ev_txn"] = pg_array(transaction_of if transaction_of is not None else [1] * len(bodies))
    statement = EVENTS_STATEMENT.replace(
        "e.body FROM jsonb_array_elements(CAST(:ev_bodies AS jsonb)) WITH ORDINALITY AS e(body, n) ",
        f"jsonb_set(e.body, '{{data,transaction_id}}', to_jsonb({t}.id)) "
        "FROM jsonb_array_elements(CAST(:ev_bodies AS jsonb)) WITH ORDINALITY AS e(body, n) "
        f"JOIN {t} ON {t}.n = (CAST(:ev_txn AS int[]))[e.n] ")
    assert statement != EVENTS_STATEMENT
    return statement, params, bodies


def rows_of(bodies: list[dict[str, Any]], ids: dict[str, int]) -> list[OutboxRow]:
    """The OutboxRows of ``events_statement``'s bodies, given ``event_id -> id``."""
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
    # Each event_id is a name-based (version 3, MD5) UUID of a random seed drawn for this
    # statement and the row's number: unique as a random one, at a fraction of the cost of
    # gen_random_uuid() per row (one strong-random draw each: ~1 s per 100,000 rows here).
    # Only the ids come back from the INSERT (never 100,000 bodies held for a count); the
    # rows themselves are read back when there are few enough to publish now.
    row = conn.execute(
        text(ADD_EVENTS_SELECT.format(select=select_sql)),
        {**params, "_dest": EVENTS_EXCHANGE, "_name": name, "_max": return_max,
         "_now": datetime.now(timezone.utc).isoformat(), "_seed": str(uuid.uuid4())},
    ).one()
    if not row.ids:
        return int(row.n), []
    rows = conn.execute(
        text("SELECT id, routing_key, body FROM outbox WHERE id = ANY(:ids) ORDER BY id"),
        {"ids": list(row.ids)},
    ).all()
    return int(row.n), [OutboxRow(r.id, "event", EVENTS_EXCHANGE, r.routing_key, r.body)
                        for r in rows]


def _insert(conn, kind, destination, routing_key, body, event_name, recipient) -> OutboxRow:
    row_id = conn.execute(
        INSERT_ROW,
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


class Relay:
    """Publishes committed outbox rows of one worker process in batches, from one thread.

    ``submit`` (called right after a commit) only queues the rows.  The thread takes
    everything queued (at most ``max_batch`` rows), publishes it on its own connection
    with publisher confirms — all of the batch first, then one wait for the confirms —
    and marks the confirmed rows published in one UPDATE.  A row that is not confirmed
    (broker down, nacked, unroutable) stays unpublished for ``sweep``: nothing committed
    is ever lost, and nothing rolled back ever reaches the relay.  A crash between the
    confirm and the mark publishes the row again later (events are at-least-once,
    commands are claimed once by ``(actor, request_id)``), as before.
    """

    def __init__(self, broker: RabbitmqBroker, *, max_batch: int = 500) -> None:
        self.broker = broker
        self.max_batch = max_batch
        self._queue: collections.deque[tuple[Engine, list[OutboxRow]]] = collections.deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._busy = False
        self._conn: pika.BlockingConnection | None = None
        self._channel = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="ballast-outbox-relay")
        self.published = 0
        self.batches = 0

    def start(self) -> "Relay":
        self._thread.start()
        return self

    def submit(self, engine: Engine, rows: list[OutboxRow]) -> None:
        with self._cv:
            self._queue.append((engine, rows))
            self._cv.notify()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything submitted so far was published (or left to the sweeper)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.1))
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """Publish what is queued, then end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join(timeout)
        self._close()

    def _take(self) -> list[tuple[Engine, list[OutboxRow]]] | None:
        with self._cv:
            while not self._queue:
                self._busy = False
                self._cv.notify_all()
                if self._stopping:
                    return None
                self._cv.wait()
            self._busy = True
            taken, n = [], 0
            while self._queue and n < self.max_batch:
                item = self._queue.popleft()
                taken.append(item)
                n += len(item[1])
            return taken

    def _run(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            try:
                self._relay(taken)
            except Exception as exc:  # the relay must not die; the sweeper has the rows
                log.warning("outbox.relay_failed", error=_describe(exc),
                            pending=sum(len(rows) for _, rows in taken))

    def _relay(self, taken: list[tuple[Engine, list[OutboxRow]]]) -> None:
        rows = [(engine, row) for engine, batch in taken for row in batch]
        try:
            confirmed = self._publish_batch([row for _, row in rows])
        except _LOST as exc:
            self._close()
            log.warning("outbox.publish_failed", error=_describe(exc), pending=len(rows))
            return
        by_engine: dict[int, tuple[Engine, list[int]]] = {}
        for engine, row in rows:
            if row.id in confirmed:
                by_engine.setdefault(id(engine), (engine, []))[1].append(row.id)
        for engine, ids in by_engine.values():
            _mark(engine, ids)
        self.published += len(confirmed)
        self.batches += 1
        if len(confirmed) < len(rows):
            log.warning("outbox.publish_failed", error="not confirmed by the broker",
                        pending=len(rows) - len(confirmed))

    def _open(self):
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self._close()
        self._conn = pika.BlockingConnection(self.broker.parameters)
        channel = self._conn.channel()
        channel.exchange_declare(exchange=EVENTS_EXCHANGE, exchange_type="topic", durable=True)
        # Asynchronous confirms on the channel underneath the blocking one: publishes do not
        # wait one by one; the acks (``multiple`` covers a run of tags) arrive while we wait.
        self._acks: dict[int, bool] = {}
        self._returned: set[str] = set()
        self._next_tag = 1
        selected = []
        channel._impl.confirm_delivery(ack_nack_callback=self._on_confirm,
                                       callback=lambda _frame: selected.append(True))
        channel._impl.add_on_return_callback(self._on_return)
        while not selected:
            self._conn.process_data_events(time_limit=1)
        self._channel = channel
        return channel

    def _on_confirm(self, frame) -> None:
        method = frame.method
        ok = isinstance(method, pika.spec.Basic.Ack)
        if method.multiple:
            for tag in [t for t in self._pending if t <= method.delivery_tag]:
                self._acks[tag] = ok
                self._pending.discard(tag)
        else:
            self._acks[method.delivery_tag] = ok
            self._pending.discard(method.delivery_tag)

    def _on_return(self, _channel, _method, properties, _body) -> None:
        # An unroutable mandatory message is returned, then acked: it must not count.
        self._returned.add(properties.message_id or "")

    def _publish_batch(self, rows: list[OutboxRow], timeout: float = 30.0) -> set[int]:
        """Publish ``rows``; the ids the broker confirmed."""
        channel = self._open()
        self._pending: set[int] = set()
        self._acks.clear()
        self._returned.clear()
        tags: dict[int, tuple[OutboxRow, str]] = {}
        for row in rows:
            exchange, routing_key, body, props, key = self._frame(row)
            # The tag is pending before the publish: its ack may arrive while basic_publish
            # flushes (pika reads incoming frames then), and must find it.
            tags[self._next_tag] = (row, key)
            self._pending.add(self._next_tag)
            self._next_tag += 1
            # A command must reach its queue (mandatory, as ``broker.enqueue``); an event
            # nobody subscribes to is simply not routed, as before.
            channel.basic_publish(exchange=exchange, routing_key=routing_key, body=body,
                                  properties=props, mandatory=row.kind == "message")
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            self._conn.process_data_events(time_limit=0.05)
        return {row.id for tag, (row, key) in tags.items()
                if self._acks.get(tag) and key not in self._returned}

    def _frame(self, row: OutboxRow):
        if row.kind == "message":
            message = sign_as_ballast(dramatiq.Message(**row.body))
            # As ``broker.enqueue`` does (a .DQ row already names its delay queue and eta).
            self.broker.declare_queue(q_name(message.queue_name), ensure=True)
            self.broker.emit_before("enqueue", message, None)
            self.broker.emit_after("enqueue", message, None)
            return ("", message.queue_name, message.encode(),
                    pika.BasicProperties(delivery_mode=2, message_id=message.message_id,
                                         priority=message.options.get("broker_priority")),
                    message.message_id)
        key = row.body.get("event_id") or f"outbox:{row.id}"
        return (EVENTS_EXCHANGE, row.routing_key, json.dumps(row.body, default=str).encode(),
                pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                     message_id=key), key)

    def _close(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass


_relays: dict[int, Relay] = {}
_relays_lock = threading.Lock()


def start_relay(broker: dramatiq.Broker) -> Relay | None:
    """Start the relay of this process for ``broker`` (a worker's, at boot); None for a
    broker that is not RabbitMQ (those publish inline)."""
    if not isinstance(broker, RabbitmqBroker):
        return None
    with _relays_lock:
        relay = _relays.get(id(broker))
        if relay is None:
            relay = _relays[id(broker)] = Relay(broker).start()
        return relay


def stop_relay(broker: dramatiq.Broker) -> None:
    with _relays_lock:
        relay = _relays.pop(id(broker), None)
    if relay is not None:
        relay.stop()


def relay_for(broker: dramatiq.Broker) -> Relay | None:
    return _relays.get(id(broker))


def _mark(engine: Engine, ids: list[int]) -> None:
    with engine.begin() as conn:
        conn.execute(MARK_PUBLISHED, {"ids": ids})


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
                    SWEEP_BATCH, {"grace": timedelta(seconds=grace_s), "limit": limit})
            ]
            for row in rows:
                try:
                    pub.publish(row)
                except Exception as exc:
                    conn.execute(update(outbox).where(_o.id == row.id).values(
                        attempts=_o.attempts + 1, last_error=_describe(exc)[:500]))
                    log.warning("outbox.sweep_failed", outbox_id=row.id, error=_describe(exc))
                    return published
                conn.execute(update(outbox).where(_o.id == row.id)
                             .values(published_at=func.now(), attempts=_o.attempts + 1))
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
    return conn.execute(select(func.count()).select_from(outbox)
                        .where(_o.published_at.is_(None))).scalar_one()


def oldest_pending(conn: Connection) -> datetime | None:
    return conn.execute(select(func.min(_o.created_at))
                        .where(_o.published_at.is_(None))).scalar_one()


def prune(engine: Engine, older_than_s: float, *, batch: int = 10_000) -> int:
    """Delete rows published more than ``older_than_s`` seconds ago, ``batch`` rows per
    transaction (never an unpublished row).  Returns how many."""
    deleted = delete_in_batches(engine, PRUNE_BATCH, {"age": older_than_s}, batch)
    if deleted:
        log.info("outbox.pruned", rows=deleted, older_than_s=older_than_s)
    return deleted


def prunable(conn: Connection, older_than_s: float) -> int:
    return conn.execute(
        select(func.count()).select_from(outbox)
        .where(_o.published_at.is_not(None),
               _o.published_at < func.now() - timedelta(seconds=older_than_s))).scalar_one()
