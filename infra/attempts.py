"""Is this the message's last attempt?  For steps that must leave a visible state behind
when they fail for good (a settlement), without touching the retry middleware.

The rule is the one ``infra/middleware/deadletters.RetryOrDeadLetter`` applies after a
failure: a permanent error (``BallastError``) is never retried; anything else is retried
while ``retries < max_retries`` (the actor's option, else ``BALLAST_RETRY_MAX_RETRIES``)
and the time since the first failure is under ``BALLAST_RETRY_MAX_TOTAL_MS``.  Outside a
worker (the CLI, in-process tests) nobody retries, so every attempt is the last.
"""

from __future__ import annotations

import time

import dramatiq
from dramatiq.middleware import CurrentMessage

from domain.errors import BallastError
from infra.settings import get_settings


def final_attempt(exc: BaseException) -> bool:
    """True when the failure ``exc`` of the current message will not be retried."""
    if isinstance(exc, BallastError):
        return True
    message = CurrentMessage.get_current_message()
    if message is None:
        return True
    settings = get_settings()
    retries = message.options.get("retries", 0)
    max_retries = settings.retry_max_retries
    try:
        actor = dramatiq.get_broker().get_actor(message.actor_name)
        max_retries = actor.options.get("max_retries", max_retries)
    except Exception:  # an actor this process does not know: the default applies
        pass
    now_ms = int(time.time() * 1000)
    first = message.options.get("first_failure_at", now_ms)
    return retries >= max_retries or now_ms - first >= settings.retry_max_total_ms
