"""The Dramatiq broker: RabbitMQ with publisher confirms, and its middleware."""

from __future__ import annotations

import threading

import dramatiq
import pika
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)

from infra.contract import EVENTS_EXCHANGE, QUEUES
from infra.settings import get_settings

_lock = threading.Lock()


def build_broker(url: str | None = None, *, worker: bool = False) -> RabbitmqBroker:
    """A RabbitmqBroker with confirms on, and Ballast's middleware.

    Dramatiq's own Retries middleware is replaced by ``RetryOrDeadLetter``,
    which never retries a permanent error and keeps the reason with the
    dead letter.
    """
    from infra.middleware.auth import Authenticate
    from infra.middleware.deadletters import RetryOrDeadLetter
    from infra.middleware.logcontext import LogContext

    settings = get_settings()
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
    ]
    if worker and settings.metrics_port:
        from infra.middleware.metrics import metrics_middleware

        middleware = [*metrics_middleware(settings.metrics_port), *middleware]
    broker = RabbitmqBroker(
        url=url or settings.broker_url,
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
