"""Publishing through outages: every command signed (as the harness signs), confirmed by
RabbitMQ, and published again until it is — a resend is harmless (every actor is idempotent
on its request id); a message never confirmed would be the sender's loss, not Ballast's."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import dramatiq
import pika

from infra.contract import spec_for
from tests import harness

GIVE_UP_S = 180.0  # s a publish keeps trying through an outage


class Sender:
    """Parameters: env (the run's services)."""

    def __init__(self, env: harness.TestEnv) -> None:
        self.env = env
        self._conn: pika.BlockingConnection | None = None
        self._ch = None
        self._lock = threading.Lock()
        self.published = 0  # messages confirmed by RabbitMQ
        self.republished = 0  # publishes repeated because an outage hid the confirm

    def _channel(self):
        if self._ch is None or not self._ch.is_open:
            self.close()
            params = pika.URLParameters(self.env.broker_url)
            params.socket_timeout = 5
            params.blocked_connection_timeout = 30
            self._conn = pika.BlockingConnection(params)
            self._ch = self._conn.channel()
            self._ch.confirm_delivery()
        return self._ch

    def send(self, actor: str, **kwargs: Any) -> str:
        """A signed command to its contract queue; returns its message id."""
        spec = spec_for(actor)
        msg = dramatiq.Message(queue_name=spec.queue, actor_name=actor, args=(), kwargs=kwargs,
                               options={})
        signed = self._retry(lambda: harness.keyring(self.env).sign(msg))
        self.publish(spec.queue, json.dumps(signed.asdict()).encode())
        return msg.message_id

    def publish(self, queue: str, body: bytes) -> None:
        """Any bytes to ``queue``, persistent, confirmed (retried through outages)."""
        tries = [0]

        def once():
            tries[0] += 1
            self._channel().basic_publish(exchange="", routing_key=queue, body=body,
                                          properties=pika.BasicProperties(delivery_mode=2),
                                          mandatory=True)
        with self._lock:
            self._retry(once, reset=True)
            self.published += 1
            self.republished += tries[0] - 1

    def _retry(self, fn, reset: bool = False):
        deadline = time.monotonic() + GIVE_UP_S
        while True:
            try:
                return fn()
            except Exception:
                if time.monotonic() > deadline:
                    raise
                if reset:
                    self.close()
                time.sleep(0.5)

    def close(self) -> None:
        try:
            if self._conn is not None and self._conn.is_open:
                self._conn.close()
        except Exception:
            pass
        self._conn = self._ch = None


class EventLog:
    """Every event of ``ballast.events``, consumed throughout the run from a durable queue
    (so a broker restart keeps what was not read yet), reconnecting after outages."""

    QUEUE = "chaos.events"

    def __init__(self, env: harness.TestEnv) -> None:
        self.env = env
        self.ids: list[str] = []  # in the order received, repeats included
        self.names: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos-events")
        self.reconnects = 0

    def start(self) -> "EventLog":
        self._declare()
        self._thread.start()
        return self

    def _declare(self):
        conn = pika.BlockingConnection(pika.URLParameters(self.env.broker_url))
        ch = conn.channel()
        ch.exchange_declare("ballast.events", exchange_type="topic", durable=True)
        ch.queue_declare(self.QUEUE, durable=True)
        ch.queue_bind(self.QUEUE, "ballast.events", routing_key="#")
        return conn, ch

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, ch = self._declare()
                try:
                    while not self._stop.is_set():
                        method, _, body = ch.basic_get(self.QUEUE, auto_ack=False)
                        if method is None:
                            conn.sleep(0.2)
                            continue
                        doc = json.loads(body)
                        self.ids.append(doc["event_id"])
                        self.names[doc["event_id"]] = doc["event"]
                        ch.basic_ack(method.delivery_tag)
                finally:
                    try:
                        conn.close()
                    except Exception:
                        pass
            except Exception:
                self.reconnects += 1
                self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
