"""The Dramatiq broker: RabbitMQ with publisher confirms, and its middleware."""

from __future__ import annotations

import hashlib
import threading

import dramatiq
import dramatiq.brokers.rabbitmq as dramatiq_rabbitmq
import pika
from dramatiq.brokers.rabbitmq import (
    DEAD_MESSAGE_TTL,
    RabbitmqBroker,
    _RabbitmqConsumer,
    _RabbitmqMessage,
)
from dramatiq.common import compute_backoff, q_name, xq_name
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)

from infra import deadletter_log
from infra.contract import EVENTS_EXCHANGE, QUEUES, envelope
from infra.errors import is_transient
from infra.logs import get_logger
from infra.middleware.auth import Authenticate
from infra.middleware.deadletters import (
    RetryOrDeadLetter,
    count_dead_letter,
    dead_letter_info,
    publish_rejected,
)
from infra.middleware.logcontext import LogContext
from infra.middleware.metrics import metrics_middleware
from infra.middleware.relay import OutboxRelay
from infra.middleware.threads import SwitchInterval, ThreadWatch
from infra.settings import broker_urls, get_settings

log = get_logger(__name__)
_lock = threading.Lock()

#: Longest pause (s) before a refusal whose record could not be written goes back to its
#: queue; the consumer's connection keeps its heartbeats meanwhile (``connection.sleep``).
REFUSAL_RECORD_PAUSE_MAX_S = 2.0


class BallastBroker(RabbitmqBroker):
    """Dramatiq's RabbitmqBroker whose consumers check every envelope on arrival.

    Dramatiq trusts the envelope it decodes; a wrong type in one field of it kills a
    worker thread or crash-loops a consumer (see ``infra.contract.envelope``).  Here
    the raw body is checked before Dramatiq builds its ``Message``: a refused one is
    dead-lettered once to ``Q.XQ`` with its reason, a ``command.rejected`` event is
    published, and it is acknowledged; Dramatiq never sees it.  The consumer is the
    hook rather than an Encoder: an encoder's ``decode`` knows neither the queue the
    body came from nor how to acknowledge it, and its only way out (``DecodeError``)
    makes Dramatiq nack, which RabbitMQ dead-letters without a reason.
    """

    def __init__(self, *, queue_type: str = "classic", delivery_limit: int = 20, **kwargs) -> None:
        self.queue_type = queue_type
        self.delivery_limit = delivery_limit
        super().__init__(**kwargs)

    @property
    def consumer_class(self):
        return _CheckedConsumer

    def _build_queue_arguments(self, queue_name):
        arguments = super()._build_queue_arguments(queue_name)
        if self.queue_type == "quorum":
            # A second line against poison: a message that kills its worker process on every
            # delivery (no envelope check can see that) is dead-lettered after the limit.
            arguments.update({"x-queue-type": "quorum", "x-delivery-limit": self.delivery_limit})
        return arguments

    def _declare_xq_queue(self, queue_name):
        if self.queue_type != "quorum":
            return super()._declare_xq_queue(queue_name)
        return self.channel.queue_declare(
            queue=xq_name(queue_name), durable=True,
            arguments={"x-message-ttl": DEAD_MESSAGE_TTL, "x-queue-type": "quorum"})


class _CheckedConsumer(_RabbitmqConsumer):
    """Checks each delivery's envelope; refuses it (dead letter + ack) or hands it on."""

    _reject_channel = None
    #: Refusals whose durable record failed for a transient cause: body digest -> attempts.
    _record_attempts: dict[str, int] | None = None

    def __next__(self):
        try:
            method, properties, body = next(self.iterator)
            if method is None:
                return None
        except (AssertionError, pika.exceptions.AMQPConnectionError,
                pika.exceptions.AMQPChannelError) as e:
            if getattr(e, "reply_code", None) == 404:
                self.broker.queues_pending.add(q_name(self.queue_name))
            raise ConnectionClosed(e) from None

        actors = {name: actor.queue_name for name, actor in self.broker.actors.items()}
        verdict = envelope.check(body, self.queue_name, actors)
        message = None
        if verdict.ok:
            fields = verdict.fields
            fields["args"] = tuple(fields["args"])
            try:
                message = dramatiq.Message(**fields)
            except Exception as exc:  # pragma: no cover - check() admits only valid fields
                verdict = envelope.Verdict(None, f"invalid payload: {exc}"[:300],
                                           envelope.salvage(body, fields, self.queue_name))
        if message is None:
            self._refuse(method.delivery_tag, verdict, body)
            return None
        self.known_tags.add(method.delivery_tag)
        return _RabbitmqMessage(method.redelivered, method.delivery_tag, message)

    def _refuse(self, tag: int, verdict: envelope.Verdict, raw_body: bytes = b"") -> None:
        """Record, dead-letter (confirmed) then ack; if the dead letter cannot be published,
        nack, so RabbitMQ's own dead-lettering still keeps the message in ``Q.XQ``.

        When the durable record cannot be written for a transient cause (the database
        restarting), the message goes back to its queue after a pause, up to
        ``retry_max_retries`` times, to be refused again once the database takes it: it is
        not dead-lettered unrecorded, and never run (its envelope is checked again)."""
        body = dict(verdict.salvage)
        raw = body.pop("raw", None)
        info = dead_letter_info(verdict.reason, "invalid", "InvalidEnvelope", "", 0)
        if raw is not None:
            info["body"] = raw
        body["options"] = {**body.get("options", {}), "dead_letter": info}
        queue = body["queue_name"]
        try:
            deadletter_log.write(body, info)  # durable, whatever RabbitMQ's copy becomes
        except Exception as exc:
            if self._record_later(tag, raw_body, exc):
                return
            log.error("dead_letter.record_failed", error=f"{type(exc).__name__}: {exc}"[:300])
        log.warning("message.refused", queue=self.queue_name, message_id=body["message_id"],
                    actor=body["actor_name"], reason=info["reason"])
        try:
            if self._reject_channel is None or not self._reject_channel.is_open:
                self._reject_channel = self.connection.channel()
                self._reject_channel.confirm_delivery()
            self._reject_channel.basic_publish(
                exchange="", routing_key=xq_name(queue),
                body=envelope.encode(body),
                properties=pika.BasicProperties(delivery_mode=2), mandatory=True)
            self.channel.basic_ack(tag)
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError,
                AssertionError) as e:
            log.error("message.refuse_failed", queue=self.queue_name,
                      error=f"{type(e).__name__}: {e}"[:300])
            try:
                self.channel.basic_nack(tag, requeue=False)
            except Exception:
                pass
            raise ConnectionClosed(e) from None
        (self._record_attempts or {}).pop(hashlib.sha256(raw_body).hexdigest(), None)
        count_dead_letter(queue, body["actor_name"], "invalid")
        publish_rejected(self.broker, body["message_id"], body["actor_name"], queue,
                         body["kwargs"], info)


    def _record_later(self, tag: int, raw_body: bytes, exc: BaseException) -> bool:
        """Put the refusal back on its queue after a pause (its record failed for a
        transient cause, within the retry count).  False when it must be dead-lettered now."""
        if self._record_attempts is None:
            self._record_attempts = {}
        digest = hashlib.sha256(raw_body).hexdigest()
        attempts = self._record_attempts.get(digest, 0)
        settings = get_settings()
        if not is_transient(exc) or attempts >= settings.retry_max_retries:
            self._record_attempts.pop(digest, None)
            return False
        self._record_attempts[digest] = attempts + 1
        _, delay_ms = compute_backoff(attempts, factor=settings.retry_min_backoff_ms,
                                      max_backoff=settings.retry_max_backoff_ms)
        pause = min(delay_ms / 1000, REFUSAL_RECORD_PAUSE_MAX_S)
        log.warning("dead_letter.record_retry", queue=self.queue_name, attempt=attempts + 1,
                    delay_ms=int(pause * 1000), error=f"{type(exc).__name__}: {exc}"[:300])
        try:
            self.connection.sleep(pause)
            self.channel.basic_nack(tag, requeue=True)
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError,
                AssertionError) as e:
            raise ConnectionClosed(e) from None  # unacked: RabbitMQ redelivers it
        return True


def build_broker(url: str | None = None, *, worker: bool = False) -> RabbitmqBroker:
    """A BallastBroker (envelopes checked on arrival) with confirms on, and Ballast's
    middleware.

    Dramatiq's own Retries middleware is replaced by ``RetryOrDeadLetter``,
    which never retries a permanent error and keeps the reason with the
    dead letter.
    """
    settings = get_settings()
    # Dramatiq reads the XQ's x-message-ttl from this module global when it declares a queue.
    dramatiq_rabbitmq.DEAD_MESSAGE_TTL = settings.dead_letter_ttl_ms
    middleware = [
        AgeLimit(),
        TimeLimit(time_limit=settings.actor_time_limit_ms),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        CurrentMessage(),
        LogContext(),
        Authenticate(),  # before the unit of work: a refusal changes nothing
        RetryOrDeadLetter(),
        ThreadWatch(),
        SwitchInterval(),  # worker processes only (after_worker_boot)
        OutboxRelay(),  # worker processes only (after_worker_boot)
    ]
    if worker and settings.metrics_port:
        middleware = [*metrics_middleware(settings.metrics_port), *middleware]
    broker = BallastBroker(
        queue_type=settings.queue_type,
        delivery_limit=settings.queue_delivery_limit,
        # Every node of a cluster (BALLAST_BROKER_URL may list several): Dramatiq hands
        # the list to pika, which tries each in turn on every (re)connection.
        url=broker_urls(url or settings.broker_url),
        confirm_delivery=True,
        middleware=middleware,
    )
    for queue in QUEUES:
        broker.declare_queue(queue)
    return broker


def get_broker() -> dramatiq.Broker:
    """The process's global broker, created from settings on first use."""
    with _lock:
        current = dramatiq.broker.global_broker
        if current is None:
            current = build_broker()
            dramatiq.set_broker(current)
        return current


def declare_topology(broker: RabbitmqBroker) -> list[str]:
    """Declare every queue (with .DQ and .XQ) and the events exchange. Idempotent."""
    for queue in QUEUES:
        broker.declare_queue(queue, ensure=True)
    declare_events_exchange(broker.channel)
    return list(QUEUES)


def declare_events_exchange(channel: pika.adapters.blocking_connection.BlockingChannel) -> None:
    channel.exchange_declare(exchange=EVENTS_EXCHANGE, exchange_type="topic", durable=True)
