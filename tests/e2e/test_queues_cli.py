"""``ballast queues``: the management API's counts (messages in flight included) when it is
reachable, AMQP's with honestly labelled columns when it is not."""

from __future__ import annotations

import json
import subprocess
import sys

import pika
import pytest

from infra import rabbit_admin
from tests.harness import ROOT, amqp, wait_until

pytestmark = pytest.mark.e2e
QUEUE = "ballast.step.reports"
NO_API = {"BALLAST_RABBITMQ_API_URL": "http://127.0.0.1:9"}  # nothing listens there


def cli(env, *args: str, **overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infra.cli.main", *args], cwd=ROOT,
                          env=env.environ(COLUMNS="80", **overrides), capture_output=True,
                          text=True, timeout=120)


def row(env, **overrides) -> dict:
    done = cli(env, "queues", "--json", **overrides)
    assert done.returncode == 0, done.stderr
    return next(r for r in json.loads(done.stdout) if r["queue"] == QUEUE)


@pytest.fixture
def held(env, clean_queues):
    """Three messages on QUEUE, two of them delivered and held unacknowledged."""
    from infra.broker import build_broker, declare_topology

    broker = build_broker(env.broker_url)
    declare_topology(broker)
    broker.close()
    conn = amqp(env)
    ch = conn.channel()
    for i in range(3):
        ch.basic_publish("", QUEUE, b'{"held": %d}' % i, pika.BasicProperties(delivery_mode=2))
    for _ in range(2):
        method, _, _ = ch.basic_get(QUEUE, auto_ack=False)
        assert method is not None
    yield
    conn.close()  # unacknowledged: back to the queue, then purged


def test_over_amqp_in_flight_messages_are_not_counted_and_the_columns_say_so(env, held):
    r = row(env, **NO_API)
    assert (r["source"], r["ready"], r["unacked"]) == ("amqp", 1, None)
    human = cli(env, "queues", **NO_API)
    assert "queues (over AMQP: messages ready only)" in human.stdout
    assert "delayed (ready)" in human.stdout and "dead (ready)" in human.stdout
    assert human.stderr.strip().splitlines() == [
        "in-flight, unacknowledged and held delayed messages are not visible over AMQP; enable "
        "the management plugin or set BALLAST_RABBITMQ_API_URL"]
    assert max(len(line) for line in human.stdout.splitlines()) <= 80
    assert any(line.split()[:1] == [QUEUE] for line in human.stdout.splitlines())  # never folded


def test_the_management_api_counts_messages_in_flight(env, held):
    if not rabbit_admin.api_reachable(env.broker_url):
        pytest.skip("RabbitMQ's management API is not enabled here "
                    "(rabbitmq-plugins enable rabbitmq_management)")
    # The API's statistics are refreshed every few seconds: poll until they show the delivery.
    r = wait_until(lambda: (lambda x: x if x["unacked"] == 2 else None)(row(env)),
                   timeout=60, what="the API to see the unacknowledged messages")
    assert (r["source"], r["ready"], r["unacked"]) == ("management", 1, 2)
    human = cli(env, "queues")
    assert "queues (management API)" in human.stdout and "unacked" in human.stdout
    line = next(x for x in human.stdout.splitlines() if x.split()[:1] == [QUEUE])
    assert line.split()[1:3] == ["1", "2"]
    assert max(len(x) for x in human.stdout.splitlines()) <= 80


def test_watch_is_refused_when_piped(env):
    done = cli(env, "queues", "--watch")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
