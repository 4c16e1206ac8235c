"""Retries and dead letters through a real worker: transient errors back off, then land in
.XQ with their reason and traceback; permanent ones land there at once."""

from __future__ import annotations

import json
import time

import dramatiq
import pytest
import redis
from sqlalchemy import text

from infra import rabbit
from tests.e2e.flaky_actors import QUEUE
from tests.harness import EventTap, Worker, publish_raw, purge_all, uid, wait_until

pytestmark = pytest.mark.e2e

MIN_BACKOFF_MS = 200  # the harness's BALLAST_RETRY_MIN_BACKOFF_MS


@pytest.fixture(scope="module")
def flaky_worker(env):
    purge_all(env)
    w = Worker(env, modules=["tests.e2e.flaky_actors"], BALLAST_RETRY_MAX_RETRIES="2").start()
    yield w
    w.stop()
    purge_all(env)


def send(env, actor: str, key: str) -> str:
    msg = dramatiq.Message(queue_name=QUEUE, actor_name=actor, args=(), kwargs={"key": key},
                           options={})
    publish_raw(env, QUEUE, json.dumps(msg.asdict()).encode())
    return msg.message_id


def attempts(env, key: str) -> list[float]:
    client = redis.Redis.from_url(env.redis_url)
    try:
        return [float(t) for t in client.lrange(key, 0, -1)]
    finally:
        client.close()


def dead_letter(env, message_id: str) -> rabbit.DeadLetter | None:
    found = [d for d in rabbit.list_dead_letters(QUEUE, 1000, env.broker_url)
             if d.message_id == message_id]
    return found[0] if found else None


def records(engine, message_id: str, columns: str) -> list[tuple]:
    """``columns`` of the message's rows in the durable dead-letter log."""
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            f"SELECT {columns} FROM dead_letters WHERE message_id = :m"), {"m": message_id})]


def rejections_written(engine, message_id: str) -> int:
    """How many ``command.rejected`` outbox rows name the message."""
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT count(*) FROM outbox WHERE event_name = 'command.rejected' "
            "AND body->'data'->>'message_id' = :m"), {"m": message_id}).scalar_one()


def test_a_transient_error_is_retried_with_backoff_then_dead_lettered_with_its_traceback(env, flaky_worker):
    key = uid("k")
    message_id = send(env, "always_transient", key)
    letter = wait_until(lambda: dead_letter(env, message_id), what="dead letter")
    times = attempts(env, key)
    assert len(times) == 3  # the first attempt and two retries
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(gap >= 0.9 * MIN_BACKOFF_MS / 2 / 1000 for gap in gaps), gaps  # jitter halves at most
    info = letter.info
    assert info["retries"] == 2 and info["code"] == "transient"
    assert info["reason"].startswith("2 retries exhausted: OperationalError")
    assert "server closed the connection unexpectedly" in info["traceback"]
    assert "always_transient" in info["traceback"]
    summary = letter.summary()
    assert (summary["queue"], summary["actor"], summary["retries"]) == (QUEUE, "always_transient", 2)


def test_a_transient_error_that_clears_is_not_dead_lettered(env, flaky_worker):
    key = uid("k")
    message_id = send(env, "transient_once", key)
    wait_until(lambda: len(attempts(env, key)) == 2, what="the retry")
    time.sleep(1)
    assert dead_letter(env, message_id) is None
    assert len(attempts(env, key)) == 2


def test_a_retry_that_cannot_be_enqueued_is_kept_in_the_dead_letter_queue(env, flaky_worker):
    key = uid("k")
    message_id = send(env, "transient_while_broker_down", key)
    letter = wait_until(lambda: dead_letter(env, message_id), what="dead letter")
    assert letter.summary()["reason"].startswith("dead-lettered by RabbitMQ")
    assert len(attempts(env, key)) == 1


def test_a_permanent_error_is_dead_lettered_at_once_with_its_reason(env, flaky_worker):
    tap = EventTap(env, "command.rejected")
    try:
        key = uid("k")
        message_id = send(env, "always_refused", key)
        letter = wait_until(lambda: dead_letter(env, message_id), what="dead letter")
        assert attempts(env, key)[1:] == []  # tried once
        assert letter.info["retries"] == 0 and letter.info["code"] == "refused"
        assert letter.info["reason"] == f"{key} is refused for good"
        rejected = wait_until(lambda: [e for e in tap.named("command.rejected")
                                       if e["data"]["message_id"] == message_id])
        assert rejected[0]["data"]["reason"] == f"{key} is refused for good"
    finally:
        tap.close()


def test_a_replayed_dead_letter_starts_its_retries_afresh(env, flaky_worker):
    key = uid("k")
    message_id = send(env, "always_transient", key)
    wait_until(lambda: dead_letter(env, message_id), what="dead letter")
    assert rabbit.replay(QUEUE, {message_id}, env.broker_url) == 1
    wait_until(lambda: len(attempts(env, key)) == 6, what="three more attempts")
    letter = wait_until(lambda: dead_letter(env, message_id), what="second dead letter")
    assert letter.info["retries"] == 2
    assert letter.body["options"]["replays"] == 1
    assert letter.body["options"]["last_dead_letter_reason"].startswith("2 retries exhausted")


def test_retries_stop_when_the_time_budget_is_spent(env, flaky_worker):
    flaky_worker.stop()  # this test wants its own budget
    w = Worker(env, modules=["tests.e2e.flaky_actors"], BALLAST_RETRY_MAX_RETRIES="50",
               BALLAST_RETRY_MAX_TOTAL_MS="1").start()
    try:
        key = uid("k")
        message_id = send(env, "always_transient", key)
        letter = wait_until(lambda: dead_letter(env, message_id), what="dead letter")
        assert len(attempts(env, key)) == 2  # the first failure starts the clock
        assert letter.info["reason"].startswith("time budget spent: OperationalError")
    finally:
        w.stop()
        flaky_worker.start()


def test_a_refused_envelope_whose_record_cannot_be_written_is_recorded_once_the_database_lets_it(
        env, engine, flaky_worker):
    """An envelope refused before Dramatiq sees it, while ``dead_letters`` cannot be
    written (a lock timeout on the locked table): it goes back to its queue after a pause
    rather than to ``Q.XQ`` unrecorded, and is recorded, dead-lettered and announced once
    the lock is gone."""
    flaky_worker.stop()
    w = Worker(env, modules=["tests.e2e.flaky_actors"], BALLAST_RETRY_MAX_RETRIES="8",
               PGOPTIONS="-c lock_timeout=300").start()
    tap = EventTap(env, "command.rejected")
    try:
        body = dramatiq.Message(queue_name=QUEUE, actor_name="always_refused", args=(),
                                kwargs={}, options={}).asdict()
        body["kwargs"] = ["not", "an", "object"]
        message_id = body["message_id"]
        with engine.connect() as locker:
            locker.execute(text("LOCK TABLE dead_letters IN ACCESS EXCLUSIVE MODE"))
            publish_raw(env, QUEUE, json.dumps(body).encode())
            wait_until(lambda: w.log().count('"dead_letter.record_retry"') >= 2,
                       what="two failed writes of the refusal's record")
            assert dead_letter(env, message_id) is None  # not dead-lettered unrecorded
            locker.rollback()

        rows = wait_until(lambda: records(engine, message_id, "code, status"),
                          what="the refusal's record")
        assert rows == [("invalid", "dead")]
        letter = wait_until(lambda: dead_letter(env, message_id), what="dead letter")
        assert letter.info["code"] == "invalid"
        assert letter.info["reason"].startswith("invalid payload")
        wait_until(lambda: [e for e in tap.named("command.rejected")
                            if e["data"]["message_id"] == message_id], what="command.rejected")
        time.sleep(1)
        copies = [d for d in rabbit.list_dead_letters(QUEUE, 1000, env.broker_url)
                  if d.message_id == message_id]
        assert len(copies) == 1
        assert rejections_written(engine, message_id) == 1
    finally:
        tap.close()
        w.stop()
        flaky_worker.start()


@pytest.mark.parametrize("shape", [
    {"args": [1], "kwargs": {}},
    {"args": [], "kwargs": ["not", "an", "object"]},
])
def test_a_command_not_shaped_as_the_contract_says_is_dead_lettered_at_once(env, flaky_worker, shape):
    body = dramatiq.Message(queue_name="ballast.wallets", actor_name="deposit", args=(),
                            kwargs={}, options={}).asdict()
    body.update(shape)
    publish_raw(env, "ballast.wallets", json.dumps(body).encode())
    letter = wait_until(lambda: [d for d in rabbit.list_dead_letters("ballast.wallets", 1000, env.broker_url)
                                 if d.message_id == body["message_id"]], what="dead letter")[0]
    assert letter.info["retries"] == 0 and letter.info["code"] == "invalid"
    assert letter.info["reason"].startswith("invalid payload")


def alert(engine, key: str):
    with engine.connect() as conn:
        return conn.execute(text("SELECT kind, severity, status, data FROM alerts "
                                 "WHERE dedupe_key = :k"), {"k": key}).mappings().first()


def test_an_unexpected_error_is_retried_twice_then_dead_lettered_with_its_traceback_and_an_alert(
        env, engine, flaky_worker):
    """Issue 11: a bug is not retried for five minutes.  The worker allows 5 transient
    retries here; the unexpected error gets BALLAST_RETRY_UNEXPECTED_MAX_RETRIES (2)."""
    flaky_worker.stop()
    w = Worker(env, modules=["tests.e2e.flaky_actors"], BALLAST_RETRY_MAX_RETRIES="5").start()
    try:
        key = uid("k")
        message_id = send(env, "always_unexpected", key)
        letter = wait_until(lambda: dead_letter(env, message_id), what="dead letter")
        assert len(attempts(env, key)) == 3  # the first attempt and two retries, not six
        info = letter.info
        assert info["code"] == "unexpected" and info["retries"] == 2
        assert info["reason"].startswith("2 retries of an unexpected error exhausted: ValueError")
        assert "a bug no retry gets past" in info["traceback"]
        raised = wait_until(lambda: alert(engine, "unexpected_error:always_unexpected"),
                            what="the unexpected_error alert")
        assert (raised["kind"], raised["severity"], raised["status"]) \
            == ("unexpected_error", "critical", "open")
        assert raised["data"]["message_id"] == message_id

        # A check violation is a bug too; a lost race on a unique key is transient.
        key = uid("k")
        message_id = send(env, "always_check_violation", key)
        letter = wait_until(lambda: dead_letter(env, message_id), what="dead letter")
        assert len(attempts(env, key)) == 3 and letter.info["code"] == "unexpected"
        key = uid("k")
        message_id = send(env, "unique_race_once", key)
        wait_until(lambda: len(attempts(env, key)) == 2, what="the retry")
        time.sleep(1)
        assert dead_letter(env, message_id) is None

        # A transient error in the same worker still gets all five retries.
        key = uid("k")
        message_id = send(env, "always_transient", key)
        letter = wait_until(lambda: dead_letter(env, message_id), timeout=60, what="dead letter")
        assert len(attempts(env, key)) == 6 and letter.info["code"] == "transient"
    finally:
        w.stop()
        flaky_worker.start()


def test_a_refusal_whose_record_cannot_be_written_is_recorded_once_the_database_lets_it(
        env, engine, flaky_worker):
    """The chaos suite's lost record: a refusal dead-lettered while the database could not
    take its ``dead_letters`` row.  Here the write fails for real (a lock timeout on the
    locked table); the refusal is recorded once the lock is gone, published to ``Q.XQ`` and
    announced once, and the actor never runs again."""
    flaky_worker.stop()
    # Only this worker's connections give up on a lock after 300 ms.
    w = Worker(env, modules=["tests.e2e.flaky_actors"], BALLAST_RETRY_MAX_RETRIES="8",
               PGOPTIONS="-c lock_timeout=300").start()
    tap = EventTap(env, "command.rejected")
    try:
        key = uid("k")
        with engine.connect() as locker:
            locker.execute(text("LOCK TABLE dead_letters IN ACCESS EXCLUSIVE MODE"))
            message_id = send(env, "always_refused", key)
            wait_until(lambda: w.log().count('"dead_letter.record_retry"') >= 2,
                       what="two failed writes of the dead letter")
            assert dead_letter(env, message_id) is None  # not dead-lettered unrecorded
            locker.rollback()

        rows = wait_until(lambda: records(engine, message_id, "code, reason, status"),
                          what="the dead letter's record")
        assert rows == [("refused", f"{key} is refused for good", "dead")]
        letter = wait_until(lambda: dead_letter(env, message_id), what="dead letter")
        assert letter.info["code"] == "refused" and letter.info["retries"] == 0
        assert "dead_letter_pending" not in letter.body["options"]
        rejected = wait_until(lambda: [e for e in tap.named("command.rejected")
                                       if e["data"]["message_id"] == message_id])
        assert rejected[0]["data"]["reason"] == f"{key} is refused for good"
        assert len(attempts(env, key)) == 1  # the refused command never ran again
        assert rejections_written(engine, message_id) == 1
    finally:
        tap.close()
        w.stop()
        flaky_worker.start()
