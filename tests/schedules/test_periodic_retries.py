"""Periodic steps retry transient errors within their period (issue 16): each scheduled
actor has retries, and a time budget that ends before its next firing takes over."""

from __future__ import annotations

import pytest

import actors  # noqa: F401  (registers every actor on the broker)
from infra.broker import get_broker
from schedules.table import SCHEDULES


@pytest.mark.parametrize("schedule", [s for s in SCHEDULES if s.every_s], ids=lambda s: s.name)
def test_a_periodic_step_retries_within_its_period(schedule):
    actor = get_broker().get_actor(schedule.actor)
    assert actor.options.get("max_retries", 0) >= 3, "retried, not dead-lettered at once"
    budget = actor.options.get("retry_within_ms")
    assert budget is not None and 0 < budget < schedule.every_s * 1000


def test_the_alert_sweeps_webhook_step_retries_within_the_sweeps_period():
    sweep = next(s for s in SCHEDULES if s.actor == "evaluate_alerts")
    actor = get_broker().get_actor("deliver_alert_webhooks")
    assert actor.options["max_retries"] >= 3
    assert actor.options["retry_within_ms"] < sweep.every_s * 1000
