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

#: The middleware reads the clock a moment after the step does: within this margin of the
#: time budget the attempt counts as the last (marking a failure one attempt early is safe —
#: a settlement resumes from a failed state — missing the last one is not).
BUDGET_MARGIN_MS = 1000  # ms


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
    # The worker's broker, never a default one created here (it would point at the default vhost).
    broker = dramatiq.broker.global_broker
    actor = broker.actors.get(message.actor_name) if broker is not None else None
    if actor is not None:
        max_retries = actor.options.get("max_retries", max_retries)
    now_ms = int(time.time() * 1000)
    first = message.options.get("first_failure_at", now_ms)
    return retries >= max_retries or now_ms - first >= settings.retry_max_total_ms - BUDGET_MARGIN_MS
