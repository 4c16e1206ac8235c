"""``final_attempt``: the settlement steps see their last attempt by the retry middleware's rule."""

from __future__ import annotations

import time

import dramatiq
import pytest
from dramatiq.middleware import CurrentMessage

from domain.errors import LedgerError
from infra.attempts import final_attempt
from infra.settings import get_settings

import actors.challenges  # noqa: E402,F401  (settle_challenge on the global broker: its policy)


def during(options: dict, exc: BaseException) -> bool:
    message = dramatiq.Message(queue_name="ballast.step.settlement", actor_name="settle_challenge",
                               args=(), kwargs={}, options=options)
    hook = CurrentMessage()
    hook.before_process_message(None, message)
    try:
        return final_attempt(exc)
    finally:
        hook.after_process_message(None, message)


def test_outside_a_worker_every_attempt_is_the_last():
    assert final_attempt(RuntimeError("boom"))


def test_a_permanent_error_is_final_at_once():
    assert during({}, LedgerError("escrow holds 5"))


@pytest.mark.parametrize("retries", [0, 1, 5])
def test_a_transient_failure_with_retries_left_is_not_final(retries):
    assert retries < get_settings().retry_max_retries
    assert not during({"retries": retries, "first_failure_at": int(time.time() * 1000)},
                      ConnectionError("db down"))


def test_the_last_retry_or_a_spent_time_budget_is_final():
    s = get_settings()
    now = int(time.time() * 1000)
    assert during({"retries": s.retry_max_retries, "first_failure_at": now}, ConnectionError("x"))
    assert during({"retries": 1, "first_failure_at": now - s.retry_max_total_ms}, ConnectionError("x"))
