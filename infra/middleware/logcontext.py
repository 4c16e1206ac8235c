"""Bind message id, actor, request id and domain ids to every log line of a message."""

from __future__ import annotations

import time

import structlog
from dramatiq.middleware import Middleware

from infra.logs import get_logger

log = get_logger(__name__)


def domain_ids(kwargs: dict) -> dict:
    """The scalar ``*_id`` kwargs of a message (user_id, challenge_id, ...)."""
    return {
        k: v for k, v in kwargs.items()
        if k.endswith("_id") and k != "request_id" and isinstance(v, (str, int))
    }


class LogContext(Middleware):
    """structlog contextvars per message, and one line per outcome."""

    def before_process_message(self, broker, message):
        structlog.contextvars.clear_contextvars()
        kwargs = message.kwargs or {}
        structlog.contextvars.bind_contextvars(
            message_id=message.message_id,
            actor=message.actor_name,
            queue=message.queue_name,
            request_id=kwargs.get("request_id") if isinstance(kwargs, dict) else None,
            retries=message.options.get("retries", 0),
            **(domain_ids(kwargs) if isinstance(kwargs, dict) else {}),
        )
        # On the proxy, not in ``options``: a retry re-publishes the options, and the
        # envelope check refuses options Ballast does not know.
        message.ballast_started = time.monotonic()

    def after_process_message(self, broker, message, *, result=None, exception=None):
        started = getattr(message, "ballast_started", None)
        ms = int((time.monotonic() - started) * 1000) if started else None
        if exception is None:
            log.info("message.processed", duration_ms=ms)
        structlog.contextvars.clear_contextvars()

    def after_skip_message(self, broker, message):
        structlog.contextvars.clear_contextvars()
