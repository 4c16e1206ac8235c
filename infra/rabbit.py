"""RabbitMQ inspection over plain AMQP (no management plugin needed).

Counts come from passive queue declarations; dead letters are read with
``basic_get`` and, unless replayed or purged, returned to their queue when
the channel closes.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pika
from dramatiq.common import dq_name, xq_name

from infra.contract import QUEUES
from infra.settings import broker_urls, get_settings


def parameters(url: str | None = None) -> list[pika.URLParameters]:
    """pika's parameters of each node of ``url`` (default BALLAST_BROKER_URL), in order:
    a connection tries them one after the other until one answers."""
    out = []
    for u in broker_urls(url or get_settings().broker_url):
        params = pika.URLParameters(u)
        params.connection_attempts = 1
        params.socket_timeout = 5
        out.append(params)
    return out


@contextmanager
def connection(url: str | None = None) -> Iterator[pika.BlockingConnection]:
    conn = pika.BlockingConnection(parameters(url))
    try:
        yield conn
    finally:
        if conn.is_open:
            conn.close()


def _count(conn: pika.BlockingConnection, queue: str) -> tuple[int, int] | None:
    """(messages ready, consumers) of ``queue``, or None when it does not exist."""
    ch = conn.channel()
    try:
        frame = ch.queue_declare(queue=queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        return None
    result = (frame.method.message_count, frame.method.consumer_count)
    ch.close()
    return result


def queue_stats(url: str | None = None) -> list[dict[str, Any]]:
    """One row per contract queue: ready, delayed, dead and consumers."""
    out = []
    with connection(url) as conn:
        for q in QUEUES:
            main = _count(conn, q)
            delayed = _count(conn, dq_name(q))
            dead = _count(conn, xq_name(q))
            out.append(
                {
                    "queue": q,
                    "ready": main[0] if main else 0,
                    "delayed": delayed[0] if delayed else 0,
                    "dead": dead[0] if dead else 0,
                    "consumers": main[1] if main else 0,
                }
            )
    return out


@dataclass
class DeadLetter:
    queue: str
    delivery_tag: int
    body: dict[str, Any]
    headers: dict[str, Any]

    @property
    def message_id(self) -> str:
        return self.body.get("message_id", "")

    @property
    def info(self) -> dict[str, Any]:
        return (self.body.get("options") or {}).get("dead_letter") or {}

    def summary(self) -> dict[str, Any]:
        kwargs = self.body.get("kwargs") if isinstance(self.body.get("kwargs"), dict) else {}
        info = self.info
        reason = info.get("reason")
        if reason is None:
            reason = _xdeath_reason(self.headers) or "dead-lettered without a recorded reason"
        return {
            "queue": self.queue,
            "message_id": self.message_id,
            "actor": self.body.get("actor_name"),
            "request_id": kwargs.get("request_id"),
            "reason": reason,
            "retries": info.get("retries", (self.body.get("options") or {}).get("retries", 0)),
            "failed_at": info.get("failed_at"),
        }


def _xdeath_reason(headers: dict[str, Any]) -> str | None:
    deaths = headers.get("x-death") or []
    if deaths:
        d = deaths[0]
        r = d.get("reason")
        return f"dead-lettered by RabbitMQ ({r.decode() if isinstance(r, bytes) else r})"
    return None


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
        return body if isinstance(body, dict) else {"raw": body}
    except (ValueError, UnicodeDecodeError):
        return {"raw": raw.decode("utf-8", "replace")[:1000]}


def read_dead_letters(
    ch: pika.adapters.blocking_connection.BlockingChannel, queue: str, limit: int | None = None
) -> list[DeadLetter]:
    """Take up to ``limit`` messages of ``queue``.XQ unacknowledged on ``ch``."""
    out: list[DeadLetter] = []
    if _count(ch.connection, xq_name(queue)) is None:
        return out
    while limit is None or len(out) < limit:
        method, props, raw = ch.basic_get(queue=xq_name(queue), auto_ack=False)
        if method is None:
            break
        out.append(DeadLetter(queue, method.delivery_tag, _decode(raw), dict(props.headers or {})))
    return out


def list_dead_letters(queue: str | None = None, limit: int = 100, url: str | None = None) -> list[DeadLetter]:
    queues = [queue] if queue else QUEUES
    found: list[DeadLetter] = []
    with connection(url) as conn:
        for q in queues:
            ch = conn.channel()
            found += read_dead_letters(ch, q, limit - len(found))
            ch.close()  # everything read goes back to the queue
            if len(found) >= limit:
                break
    return found


def find_dead_letter(message_id: str, url: str | None = None) -> DeadLetter | None:
    with connection(url) as conn:
        for q in QUEUES:
            ch = conn.channel()
            try:
                for dl in read_dead_letters(ch, q):
                    if dl.message_id == message_id:
                        return dl
            finally:
                ch.close()
    return None


def replay_body(dead: dict[str, Any], queue: str) -> dict[str, Any]:
    """The message to publish back to ``queue`` for a dead letter: retry count reset, the
    replay counted, the last reason kept."""
    body = dict(dead)
    options = dict(body.get("options") or {})
    history = options.pop("dead_letter", None)
    for key in ("retries", "first_failure_at", "traceback", "eta", "requeue_timestamp"):
        options.pop(key, None)
    options["replays"] = int(options.get("replays", 0)) + 1
    if history:
        options["last_dead_letter_reason"] = history.get("reason")
    body["options"] = options
    body["queue_name"] = queue
    return body


def publish_confirmed(queue: str, body: dict[str, Any], url: str | None = None) -> None:
    """Publish ``body`` to ``queue`` (persistent, mandatory) and wait for the confirm."""
    with connection(url) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(exchange="", routing_key=queue, body=json.dumps(body).encode(),
                         properties=pika.BasicProperties(delivery_mode=2), mandatory=True)
        ch.close()


def replay(queue: str | None, ids: set[str] | None, url: str | None = None,
           on_replayed: Callable[[DeadLetter], None] | None = None,
           countersign: Callable[[dict], dict] | None = None) -> int:
    """Move dead letters back to their queue, retry count reset.

    Each copy is published with a publisher confirm before the dead copy is
    acknowledged, so a crash in between can duplicate but never lose a
    message (and every actor is idempotent on its request id).
    """
    queues = [queue] if queue else QUEUES
    replayed = 0
    with connection(url) as conn:
        for q in queues:
            ch = conn.channel()
            ch.confirm_delivery()
            for dl in read_dead_letters(ch, q):
                if ids is not None and dl.message_id not in ids:
                    continue
                body = replay_body(dl.body, q)
                if countersign is not None:  # the signed fields stay as they are
                    body = countersign(body)
                ch.basic_publish(
                    exchange="",
                    routing_key=q,
                    body=json.dumps(body).encode(),
                    properties=pika.BasicProperties(delivery_mode=2),
                    mandatory=True,
                )
                ch.basic_ack(dl.delivery_tag)
                replayed += 1
                if on_replayed is not None:
                    on_replayed(dl)
            ch.close()
    return replayed


def discard(queue: str | None, ids: set[str], url: str | None = None) -> int:
    """Delete the dead letters with these message ids (of ``queue``, or of every queue);
    the others go back untouched.  Returns how many were deleted."""
    queues = [queue] if queue else QUEUES
    deleted = 0
    with connection(url) as conn:
        for q in queues:
            ch = conn.channel()
            for dl in read_dead_letters(ch, q):
                if dl.message_id in ids:
                    ch.basic_ack(dl.delivery_tag)
                    deleted += 1
            ch.close()
    return deleted


def purge(queue: str, url: str | None = None) -> int:
    with connection(url) as conn:
        ch = conn.channel()
        if _count(conn, xq_name(queue)) is None:
            return 0
        frame = ch.queue_purge(queue=xq_name(queue))
        return frame.method.message_count


def dead_letter_counts(url: str | None = None) -> dict[str, int]:
    return {row["queue"]: row["dead"] for row in queue_stats(url)}
