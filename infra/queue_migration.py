"""Moving an install's queues from one RabbitMQ queue type to another (classic <-> quorum).

A queue cannot change type in place, so each queue of Ballast (``Q``, ``Q.DQ`` and ``Q.XQ``
of every contract queue) that is not of the target type is moved through a holding queue:

1. its messages are moved, one at a time, into ``<name>.migrating`` (a durable queue of the
   target type): read unacknowledged, published with a publisher confirm, then acknowledged;
2. the queue is deleted only when empty (``if-empty``: a message that arrived meanwhile is
   moved first), and declared again with the target type and Ballast's arguments;
3. the held messages are moved back the same way, and the holding queue is deleted when empty.

Nothing is acknowledged before its copy is confirmed, so a crash (of this process or of the
broker) never loses a message; it can at worst copy one twice, which the request-id claim
makes harmless (commands) and ``dlq replay`` deduplicates (dead letters).  Run again after
a crash, it carries on: a holding queue left with messages is emptied back into its queue.
Bodies and properties (headers such as ``x-death``, the message id) are copied as they are;
a dead letter's ``x-message-ttl`` starts again (PostgreSQL's ``dead_letters`` keeps it).

The workers must be stopped (a queue being consumed is refused), and so must the scheduler
and publishers, which would otherwise declare a queue of their own type again in the moment
it is gone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
from dramatiq.common import dq_name, xq_name

from infra import rabbit
from infra.broker import BallastBroker
from infra.contract import QUEUES
from infra.logs import get_logger
from infra.settings import get_settings

log = get_logger(__name__)
# Probing a queue's type by declaring it makes RabbitMQ close the channel (406), which pika
# logs as a warning each time: expected here, not an operator's business.
logging.getLogger("pika.channel").setLevel(logging.ERROR)

HOLD_SUFFIX = ".migrating"


class MigrationRefused(RuntimeError):
    """The migration cannot start (one line: why)."""


@dataclass
class QueuePlan:
    name: str
    state: str  # "migrate" | "ok" (already the target type) | "absent" | "resume" (held messages)
    messages: int = 0
    held: int = 0
    consumers: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"queue": self.name, "state": self.state, "messages": self.messages,
                "held": self.held, "consumers": self.consumers}


@dataclass
class Outcome:
    to: str
    queues: list[dict[str, Any]] = field(default_factory=list)

    @property
    def moved(self) -> int:
        return sum(q.get("moved", 0) for q in self.queues)


def target_arguments(queue_type: str) -> dict[str, dict[str, Any]]:
    """Every Ballast queue name and the arguments a broker of ``queue_type`` declares it with."""
    s = get_settings()
    broker = BallastBroker(queue_type=queue_type, delivery_limit=s.queue_delivery_limit,
                           url="amqp://unused/")  # never connects: only builds arguments
    out: dict[str, dict[str, Any]] = {}
    for q in QUEUES:
        args = broker._build_queue_arguments(q)
        out[q] = args
        out[dq_name(q)] = dict(args)
        xq = {"x-message-ttl": s.dead_letter_ttl_ms}
        if queue_type == "quorum":
            xq["x-queue-type"] = "quorum"
        out[xq_name(q)] = xq
    return out


def _hold_arguments(queue_type: str) -> dict[str, Any]:
    return {"x-queue-type": "quorum"} if queue_type == "quorum" else {}


def _passive(conn: pika.BlockingConnection, name: str) -> tuple[int, int] | None:
    """(messages, consumers) of ``name``, or None when it does not exist."""
    ch = conn.channel()
    try:
        frame = ch.queue_declare(queue=name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return None
        raise
    ch.close()
    return frame.method.message_count, frame.method.consumer_count


def _is_declared_as(conn: pika.BlockingConnection, name: str, arguments: dict[str, Any]) -> bool:
    """Whether ``name`` exists with exactly these arguments: declaring it with them succeeds
    (it exists: checked first, so nothing is created here)."""
    ch = conn.channel()
    try:
        ch.queue_declare(queue=name, durable=True, arguments=arguments)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 406:  # PRECONDITION_FAILED: another type or other arguments
            return False
        raise
    ch.close()
    return True


def plan(queue_type: str, url: str | None = None) -> list[QueuePlan]:
    """What a migration to ``queue_type`` would do, queue by queue (changes nothing)."""
    wanted = target_arguments(queue_type)
    out = []
    with rabbit.connection(url) as conn:
        for name, args in wanted.items():
            found = _passive(conn, name)
            held = _passive(conn, name + HOLD_SUFFIX)
            p = QueuePlan(name, "absent", held=held[0] if held else 0)
            if found is not None:
                p.messages, p.consumers = found
                p.state = "ok" if _is_declared_as(conn, name, args) else "migrate"
            if p.state != "migrate" and held is not None:
                p.state = "resume"
            out.append(p)
    return out


def _move(conn: pika.BlockingConnection, source: str, dest: str) -> int:
    """Move every message of ``source`` to ``dest``: each copy confirmed before its original
    is acknowledged."""
    ch = conn.channel()
    ch.confirm_delivery()
    moved = 0
    while True:
        method, props, body = ch.basic_get(source, auto_ack=False)
        if method is None:
            break
        ch.basic_publish(exchange="", routing_key=dest, body=body, properties=props,
                         mandatory=True)
        ch.basic_ack(method.delivery_tag)
        moved += 1
    ch.close()
    return moved


def _delete_if_empty(conn: pika.BlockingConnection, name: str, quorum: bool) -> bool:
    """Delete ``name`` if it holds no message.  A classic queue is deleted with ``if-empty``
    (atomic); a quorum queue does not support it, so its count is read first (the holding
    queue has no publisher but this one, and the source queue none once publishers are
    stopped, as the migration requires)."""
    if quorum:
        found = _passive(conn, name)
        if found is None:
            return True
        if found[0]:
            return False
    ch = conn.channel()
    try:
        ch.queue_delete(queue=name, if_empty=not quorum)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 406:  # not empty: a message came in meanwhile
            return False
        if exc.reply_code == 404:
            return True
        raise
    ch.close()
    return True


def migrate(queue_type: str, url: str | None = None) -> Outcome:
    """Make every Ballast queue one of ``queue_type``, keeping every message (see above)."""
    wanted = target_arguments(queue_type)
    plans = plan(queue_type, url)
    busy = [p for p in plans if p.state == "migrate" and p.consumers]
    if busy:
        raise MigrationRefused(
            f"{busy[0].name} has {busy[0].consumers} consumer(s): stop every worker (and the "
            "scheduler and publishers) before moving the queues")
    outcome = Outcome(queue_type)
    with rabbit.connection(url) as conn:
        for p in plans:
            if p.state in ("ok", "absent"):
                outcome.queues.append({"queue": p.name, "state": p.state, "moved": 0})
                continue
            hold = p.name + HOLD_SUFFIX
            moved_out = 0
            if p.state == "migrate":
                conn.channel().queue_declare(queue=hold, durable=True,
                                             arguments=_hold_arguments(queue_type))
                for _ in range(100):
                    moved_out += _move(conn, p.name, hold)
                    if _delete_if_empty(conn, p.name, quorum=queue_type != "quorum"):
                        break
                else:
                    raise MigrationRefused(f"{p.name} keeps receiving messages: stop the "
                                           "publishers and the scheduler, then run it again")
            conn.channel().queue_declare(queue=p.name, durable=True, arguments=wanted[p.name])
            moved_back = _move(conn, hold, p.name)
            held_quorum = queue_type == "quorum"
            if not _delete_if_empty(conn, hold, held_quorum):  # pragma: no cover
                moved_back += _move(conn, hold, p.name)
                _delete_if_empty(conn, hold, held_quorum)
            log.info("queues.migrated", queue=p.name, to=queue_type, moved=moved_back)
            outcome.queues.append({"queue": p.name, "state": "migrated", "moved": moved_back,
                                   "held_before": p.held})
    return outcome
