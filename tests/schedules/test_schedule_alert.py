"""A schedule that stops firing is an alert (the sweep's condition ``schedules``)."""

from __future__ import annotations

import time

import pytest
import redis
from sqlalchemy import text

from infra.uow import UnitOfWork
from schedules.conditions import late, schedules_firing
from schedules.runner import PREFIX


@pytest.fixture
def client(env):
    c = redis.Redis.from_url(env.redis_url)
    for key in c.scan_iter(PREFIX + "*"):
        c.delete(key)
    yield c
    for key in c.scan_iter(PREFIX + "*"):
        c.delete(key)
    c.close()


def test_late_means_two_periods_and_two_minutes_and_a_schedule_never_fired_is_not_judged():
    now = 1_000_000.0
    assert late({"outbox_sweep": int(now - 139)}, now) == {}
    assert set(late({"outbox_sweep": int(now - 141)}, now)) == {"outbox_sweep"}
    assert late({"daily_summary": int(now - 2 * 86_400)}, now) == {}
    assert set(late({"daily_summary": int(now - 2 * 86_400 - 121)}, now)) == {"daily_summary"}
    assert late({"outbox_sweep": None}, now) == {}


def _alert(engine, key):
    with engine.connect() as conn:
        return conn.execute(text("SELECT status, subject FROM alerts WHERE dedupe_key = :k "
                                 "ORDER BY id DESC LIMIT 1"), {"k": key}).one_or_none()


def test_a_schedule_that_stopped_firing_raises_an_alert_that_resolves_when_it_fires(env, engine, client):
    client.set(PREFIX + "last:outbox_sweep", int(time.time()) - 3600)
    client.set(PREFIX + "last:alert_sweep", int(time.time()))
    with UnitOfWork(engine=engine) as uow:
        schedules_firing(uow)
        uow.commit()
    got = _alert(engine, "schedule_not_firing:outbox_sweep")
    assert got.status == "open" and "outbox_sweep has not fired for 60 min" in got.subject
    fresh = _alert(engine, "schedule_not_firing:alert_sweep")  # other tests' rows may be there
    assert fresh is None or fresh.status == "resolved"  # a schedule that fires is never open
    client.set(PREFIX + "last:outbox_sweep", int(time.time()))
    with UnitOfWork(engine=engine) as uow:
        schedules_firing(uow)
        uow.commit()
    assert _alert(engine, "schedule_not_firing:outbox_sweep").status == "resolved"
