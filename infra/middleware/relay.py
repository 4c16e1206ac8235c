"""The worker's outbox relay (``infra.outbox.Relay``): started when the worker has booted,
drained and stopped when it shuts down."""

from __future__ import annotations

from dramatiq.middleware import Middleware

from infra import outbox


class OutboxRelay(Middleware):
    """Worker threads hand their committed outbox rows to one relay thread per process."""

    def after_worker_boot(self, broker, worker) -> None:
        outbox.start_relay(broker)

    def after_worker_shutdown(self, broker, worker) -> None:
        outbox.stop_relay(broker)
