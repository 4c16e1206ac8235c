"""Is this the message's last attempt?  For steps that must leave a visible state behind
when they fail for good (a settlement), without touching the retry middleware.

The rule is ``infra.errors.verdict``, the one ``infra/middleware/deadletters.RetryOrDeadLetter``
applies after a failure (permanent: never retried; transient: ``max_retries`` within the
time budget; unexpected: ``BALLAST_RETRY_UNEXPECTED_MAX_RETRIES``).  Outside a
worker (the CLI, in-process tests) nobody retries, so every attempt is the last.
"""

from __future__ import annotations

import time

import dramatiq
from dramatiq.middleware import CurrentMessage

from domain.errors import BallastError
from infra.errors import policy_for, verdict
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
    # The worker's broker, never a default one created here (it would point at the default vhost).
    broker = dramatiq.broker.global_broker
    actor = broker.actors.get(message.actor_name) if broker is not None else None
    policy = policy_for(actor, get_settings())
    now_ms = int(time.time() * 1000)
    first = message.options.get("first_failure_at", now_ms)
    # Within the margin of the budget, count the attempt as the last (see BUDGET_MARGIN_MS).
    decided = verdict(exc, policy, retries=message.options.get("retries", 0),
                      first_failure_ms=first, now_ms=now_ms + BUDGET_MARGIN_MS)
    return not decided.retry
