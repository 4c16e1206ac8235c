"""Schedules: slot arithmetic, one firing per slot across schedulers, missed slots once."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, time as dtime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import redis
from hypothesis import given, strategies as st

from schedules.runner import PREFIX, Scheduler
from schedules.slots import latest_slot, request_id
from schedules.table import SCHEDULES, Schedule
from tests.harness import amqp, purge_all

UTC = timezone.utc
LAGOS = ZoneInfo("Africa/Lagos")


@given(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1),
                    timezones=st.just(UTC)), st.sampled_from([10, 60, 300]))
def test_interval_slot_is_the_latest_multiple_at_or_before_now(now, every):
    s = Schedule("x", "sweep_outbox", every_s=every)
    slot = latest_slot(s, now, UTC)
    assert slot <= now < slot + timedelta(seconds=every)
    assert int(slot.timestamp()) % every == 0


def test_daily_slot_is_yesterdays_before_the_time_and_todays_after():
    s = Schedule("d", "send_daily_summary", daily_at=dtime(0, 5))
    before = datetime(2026, 3, 10, 23, 4, tzinfo=UTC)  # 00:04 in Lagos (UTC+1)
    after = datetime(2026, 3, 10, 23, 6, tzinfo=UTC)  # 00:06 in Lagos
    assert latest_slot(s, before, LAGOS) == datetime(2026, 3, 10, 0, 5, tzinfo=LAGOS)
    assert latest_slot(s, after, LAGOS) == datetime(2026, 3, 11, 0, 5, tzinfo=LAGOS)


def test_daily_summary_reports_the_previous_local_day():
    daily = next(s for s in SCHEDULES if s.name == "daily_summary")
    slot = datetime(2026, 3, 11, 0, 5, tzinfo=LAGOS)
    assert daily.kwargs(slot) == {"day": "2026-03-10"}


def test_request_id_is_deterministic_per_schedule_and_slot():
    s = Schedule("alert_sweep", "evaluate_alerts", every_s=60)
    slot = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert request_id(s, slot) == request_id(s, slot) == "schedule:alert_sweep:1767268800"


@pytest.fixture
def client(env):
    c = redis.Redis.from_url(env.redis_url)
    for key in c.scan_iter(PREFIX + "*"):
        c.delete(key)
    yield c
    for key in c.scan_iter(PREFIX + "*"):
        c.delete(key)


def _drain(env, queue):
    conn = amqp(env)
    ch = conn.channel()
    got = []
    while True:
        method, _, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            break
        got.append(json.loads(body))
    conn.close()
    return got


def test_two_schedulers_at_once_fire_each_slot_once(env, client, clean_queues):
    from infra.broker import build_broker

    table = [Schedule("fast_sweep", "sweep_outbox", every_s=1)]
    brokers = [build_broker(env.broker_url), build_broker(env.broker_url)]
    for b in brokers:
        b.declare_queue("ballast.step.outbox", ensure=True)
    # A short lease so the two really compete (and may hand over) during the run.
    scheds = [Scheduler(client, b.enqueue, UTC, table, instance_id=f"s{i}", lease_ms=700)
              for i, b in enumerate(brokers)]
    stop = threading.Event()
    fired: list[list[str]] = [[], []]

    def loop(i):
        while not stop.is_set():
            fired[i] += scheds[i].tick()
            time.sleep(0.05)
            if i == 0 and len(fired[0]) == 2:
                time.sleep(1.0)  # let the lease lapse: the other takes over

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(5)
    stop.set()
    for t in threads:
        t.join()
    for b in brokers:
        b.close()
    messages = _drain(env, "ballast.step.outbox")
    ids = [m["kwargs"]["request_id"] for m in messages]
    assert len(ids) >= 4
    assert len(ids) == len(set(ids)), "a slot fired twice"
    assert sorted(ids) == sorted(fired[0] + fired[1])
    assert fired[0] and fired[1], "the lease never changed hands"


def test_a_scheduler_that_was_down_fires_the_missed_slot_once(env, client, clean_queues):
    from infra.broker import build_broker

    table = [Schedule("alert_sweep_test", "evaluate_alerts", every_s=60)]
    broker = build_broker(env.broker_url)
    broker.declare_queue("ballast.step.alerts", ensure=True)
    sched = Scheduler(client, broker.enqueue, UTC, table, instance_id="solo")
    now = datetime(2026, 5, 1, 12, 0, 30, tzinfo=UTC)
    assert len(sched.tick(now)) == 1
    # Down for ten minutes: ten slots were missed; one firing, for the latest.
    later = now + timedelta(minutes=10)
    fired = sched.tick(later)
    assert fired == [f"schedule:alert_sweep_test:{int(datetime(2026, 5, 1, 12, 10, tzinfo=UTC).timestamp())}"]
    assert sched.tick(later + timedelta(seconds=5)) == []
    broker.close()
    assert len(_drain(env, "ballast.step.alerts")) == 2


def test_every_schedule_fits_its_actors_contract():
    now = datetime(2026, 5, 1, 0, 6, tzinfo=UTC)
    for s in SCHEDULES:
        msg = Scheduler._message(s, latest_slot(s, now, UTC), "schedule:test:1")
        assert msg.kwargs["request_id"] == "schedule:test:1"
