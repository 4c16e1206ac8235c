"""Poison messages through real RabbitMQ to a real worker (issue 16, "Poison messages").

Each malformed envelope is published raw, the way any upstream could.  It must be
dead-lettered once, to the right ``Q.XQ``, with a one-line reason (never RabbitMQ's
generic one) and a ``command.rejected`` event; and a valid command sent after it must
still be processed.  A thread that dies anyway is replaced, and a metric and an alert
say so.
"""

from __future__ import annotations

import json
import socket

import dramatiq
import httpx
import pika
import pytest
from dramatiq.common import q_name
from sqlalchemy import text

from infra import rabbit
from infra.contract.envelope import MAX_BODY_BYTES
from tests.e2e.flaky_actors import attempt  # noqa: F401  (the worker loads it too)
from tests.e2e.poison_actors import QUEUE as POISON_QUEUE
from tests.harness import EventTap, Worker, amqp, publish_raw, purge_all, send, uid, wait_until

pytestmark = pytest.mark.e2e

WALLETS = "ballast.wallets"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def poison_worker(env):
    purge_all(env)
    port = free_port()
    w = Worker(env, threads=2, modules=["tests.e2e.poison_actors"],
               BALLAST_METRICS_PORT=str(port), BALLAST_METRICS_HOST="127.0.0.1")
    w.metrics_port = port
    w.start()
    yield w
    w.stop()
    purge_all(env)


@pytest.fixture
def tap(env):
    t = EventTap(env, "command.rejected")
    yield t
    t.close()


def envelope(marker: str, **changes) -> dict:
    """A valid deposit envelope (its request id is ``marker``), then ``changes``."""
    body = dramatiq.Message(
        queue_name=WALLETS, actor_name="deposit", args=(),
        kwargs={"request_id": marker, "user_id": uid(), "currency": "NGN", "amount": 100,
                "reference": "bank"},
        options={}).asdict()
    body["args"] = []
    body.update(changes)
    return body


def letters_with(env, marker: str, queue: str = WALLETS) -> list[rabbit.DeadLetter]:
    return [d for d in rabbit.list_dead_letters(q_name(queue), 1000, env.broker_url)
            if marker in json.dumps(d.body)]


def balance(engine, user: str) -> int | None:
    with engine.connect() as conn:
        return conn.execute(text("SELECT balance FROM accounts WHERE code = :c"),
                            {"c": f"user:{user}:NGN"}).scalar_one_or_none()


def assert_still_processing(env, engine) -> None:
    """A valid deposit sent now is applied: the worker is neither stopped nor stalled."""
    user = uid()
    send(env, "deposit", request_id=uid("r"), user_id=user, currency="NGN", amount=4_200,
         reference="after the poison")
    wait_until(lambda: balance(engine, user) == 4_200, timeout=20, what="the valid deposit")


def publish(env, queue: str, raw: bytes) -> None:
    """Any bytes, persistent, to any existing queue (a delay queue too)."""
    conn = amqp(env)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(exchange="", routing_key=queue, body=raw,
                         properties=pika.BasicProperties(delivery_mode=2), mandatory=True)
    finally:
        conn.close()


def refused_once(env, engine, tap, marker: str, raw: bytes, reason_part: str,
                 queue: str = WALLETS) -> rabbit.DeadLetter:
    publish(env, queue, raw)
    letter = wait_until(lambda: letters_with(env, marker, queue), timeout=20,
                        what="the dead letter")[0]
    assert_still_processing(env, engine)
    letters = letters_with(env, marker, queue)
    assert len(letters) == 1, "dead-lettered once"
    summary = letters[0].summary()
    assert summary["reason"].startswith("invalid payload: ")
    assert reason_part in summary["reason"], summary["reason"]
    assert "\n" not in summary["reason"]
    assert "dead-lettered by RabbitMQ" not in summary["reason"]
    assert not letters[0].headers.get("x-death"), "acknowledged by Ballast, not nacked"
    assert letters[0].info["code"] == "invalid" and letters[0].info["retries"] == 0
    rejected = wait_until(lambda: [e for e in tap.named("command.rejected")
                                   if e["data"]["message_id"] == letter.message_id],
                          timeout=20, what="command.rejected")
    assert rejected[0]["data"]["reason"] == summary["reason"]
    assert rejected[0]["data"]["queue"] == q_name(queue)
    return letter


DELETE = object()

CASES = {
    "options is a list": ({"options": ["a"]}, "options must be a JSON object, not a list"),
    "options is a string": ({"options": "retries"}, "options must be a JSON object, not a string"),
    "option Dramatiq would trust": ({"options": {"throws": "ValueError"}}, "options.throws"),
    "option of the wrong type": ({"options": {"retries": "many"}}, "options.retries must be"),
    "queue_name no worker consumes": ({"queue_name": "ballast.nowhere"}, "queue_name 'ballast.nowhere'"),
    "actor_name is a list": ({"actor_name": ["deposit"]}, "actor_name must be a non-empty string"),
    "actor_name is a number": ({"actor_name": 7}, "actor_name must be a non-empty string"),
    "unknown actor": ({"actor_name": "steal_everything"}, "unknown actor 'steal_everything'"),
    "actor of another queue": ({"actor_name": "open_market"}, "open_market belongs on ballast.markets"),
    "message_id is a number": ({"message_id": 12345}, "message_id must be a string"),
    "message_timestamp is a string": ({"message_timestamp": "now"}, "message_timestamp must be an integer"),
    "args is a string": ({"args": "x"}, "args must be a list"),
    "kwargs is a list": ({"kwargs": ["request_id"]}, "kwargs must be a JSON object"),
    "a field missing": ({"kwargs": DELETE}, "kwargs missing"),
    "a field too many": ({"priority": 1}, "unknown field(s) priority"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_malformed_envelope_is_dead_lettered_once_and_the_worker_goes_on(
        env, engine, poison_worker, tap, case):
    changes, reason = CASES[case]
    marker = uid("poison")
    body = envelope(marker, **changes)
    for key, value in changes.items():
        if value is DELETE:
            del body[key]
            body["message_id"] = marker
    if isinstance(body.get("kwargs"), list):
        body["kwargs"].append(marker)
    letter = refused_once(env, engine, tap, marker, json.dumps(body).encode(), reason)
    assert letter.body["queue_name"] == WALLETS


def test_a_nul_character_in_free_text_is_refused_at_once_not_retried(env, engine, poison_worker, tap):
    marker = uid("nul")
    body = envelope(marker)
    body["kwargs"]["reference"] = "bank\x00transfer"
    user = body["kwargs"]["user_id"]
    letter = refused_once(env, engine, tap, marker, json.dumps(body).encode(),
                          "kwargs.reference contains a NUL character")
    assert balance(engine, user) is None
    # The body is kept for the operator, the NUL made visible.
    assert "bank\\u0000transfer" in letter.info["body"]


@pytest.mark.parametrize("raw, reason", [
    (b"this is not json at all {m}", "the body is not JSON"),
    (b"\xff\xfe not utf-8 {m}", "the body is not UTF-8"),
    (b'["{m}", "list"]', "the body is a list, not a Dramatiq envelope"),
    (b'{"hello": "{m}"}', "not a Dramatiq envelope"),
    (b'{"queue_name": "ballast.wallets", "{m}": NaN}', "NaN is not JSON"),
])
def test_a_body_that_is_not_an_envelope_is_dead_lettered_with_a_readable_reason(
        env, engine, poison_worker, tap, raw, reason):
    marker = uid("garbage")
    letter = refused_once(env, engine, tap, marker, raw.replace(b"{m}", marker.encode()), reason)
    assert marker in letter.info["body"]
    assert rabbit.find_dead_letter(letter.message_id, env.broker_url) is not None  # dlq show finds it


def test_a_body_over_the_size_limit_is_refused(env, engine, poison_worker, tap):
    marker = uid("big")
    body = envelope(marker)
    body["kwargs"] = {"request_id": marker, "reference": "x" * (MAX_BODY_BYTES + 10)}
    letter = refused_once(env, engine, tap, marker, json.dumps(body).encode(),
                          f"more than {MAX_BODY_BYTES}")
    assert len(json.dumps(letter.body)) < 64 * 1024, "the dead letter keeps only the start"


def test_a_malformed_envelope_on_a_delay_queue_is_refused_too(env, engine, poison_worker, tap):
    marker = uid("dq")
    body = envelope(marker, queue_name=f"{WALLETS}.DQ", options={"eta": "tomorrow"})
    letter = refused_once(env, engine, tap, marker, json.dumps(body).encode(),
                          "options.eta must be", queue=f"{WALLETS}.DQ")
    assert letter.queue == WALLETS  # dead letters of Q.DQ live in Q.XQ


def test_eight_malformed_envelopes_do_not_take_the_threads(env, engine, poison_worker, tap):
    """The issue's reproduction: one bad envelope per thread (and more) used to take them all."""
    markers = [uid("many") for _ in range(8)]
    for i, marker in enumerate(markers):
        bad = [{"options": ["a"]}, {"options": "x"}, {"actor_name": [1]},
               {"queue_name": "ballast.nowhere"}][i % 4]
        publish(env, WALLETS, json.dumps(envelope(marker, **bad)).encode())
    wait_until(lambda: all(letters_with(env, m) for m in markers), timeout=30, what="8 dead letters")
    assert_still_processing(env, engine)
    assert all(len(letters_with(env, m)) == 1 for m in markers)


def test_a_dead_thread_is_replaced_and_a_metric_and_an_alert_say_so(env, engine, poison_worker):
    keys = [uid("kill") for _ in range(3)]  # more than the worker's two threads
    for key in keys:
        msg = dramatiq.Message(queue_name=POISON_QUEUE, actor_name="kill_my_thread", args=(),
                               kwargs={"key": key}, options={})
        publish_raw(env, POISON_QUEUE, json.dumps(msg.asdict()).encode())

    def attempted(key):
        import redis

        client = redis.Redis.from_url(env.redis_url)
        try:
            return client.llen(key)
        finally:
            client.close()

    wait_until(lambda: all(attempted(k) for k in keys), timeout=30, what="each killer to run")
    assert_still_processing(env, engine)

    def scrape():
        body = httpx.get(f"http://127.0.0.1:{poison_worker.metrics_port}/metrics", timeout=2).text
        for line in body.splitlines():
            if line.startswith('ballast_worker_threads_replaced_total{kind="worker"}'):
                return float(line.split()[-1]) >= len(keys) and line
        return None

    wait_until(scrape, timeout=30, what="the replaced-threads metric")
    with engine.connect() as conn:
        alert = conn.execute(text(
            "SELECT subject, data FROM alerts WHERE kind = 'worker_thread_replaced' "
            "AND status <> 'resolved' ORDER BY id DESC LIMIT 1")).one()
    assert alert.data["replaced"] >= len(keys)
    assert "AttributeError" in alert.data["error"]
    log = poison_worker.log()
    assert log.count('"worker.thread_replaced"') >= len(keys)
