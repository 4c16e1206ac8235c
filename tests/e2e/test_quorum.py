"""BALLAST_QUEUE_TYPE=quorum: every queue (with .DQ and .XQ) is a quorum queue, commands
flow as before, and the delivery limit dead-letters a message that kills its worker on
every delivery (issue 16, the stretch: quorum queues on one node, no cluster here)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import uuid
from urllib.parse import quote

import dramatiq
import pytest
from sqlalchemy import text

from infra import rabbit
from infra.contract import QUEUES
from tests.e2e.poison_actors import QUEUE as POISON_QUEUE
from infra import rabbit_admin
from tests.harness import Worker, publish_raw, send, uid, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def quorum_env(env, monkeypatch):
    """The run's database and Redis, on a fresh vhost (queues cannot change type in place);
    this process declares quorum queues too while it lasts."""
    from infra.settings import get_settings

    monkeypatch.setenv("BALLAST_QUEUE_TYPE", "quorum")
    monkeypatch.setenv("BALLAST_QUEUE_DELIVERY_LIMIT", "1")
    get_settings.cache_clear()
    vhost = f"{env.vhost}_q{uuid.uuid4().hex[:4]}"
    base = env.broker_url.rsplit("/", 1)[0]
    rabbit_admin.create_vhost(vhost, "ballast quorum test", f"{base}/{quote(vhost, safe='')}")
    qenv = dataclasses.replace(env, broker_url=f"{base}/{quote(vhost, safe='')}", vhost=vhost,
                               extra={**env.extra, "BALLAST_QUEUE_TYPE": "quorum",
                                      "BALLAST_QUEUE_DELIVERY_LIMIT": "1"})
    yield qenv
    rabbit_admin.delete_vhost(vhost, qenv.broker_url)
    monkeypatch.undo()
    get_settings.cache_clear()


def queue_types(vhost: str) -> dict[str, str]:
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "type",
                          "--formatter", "json"], check=True, capture_output=True, text=True,
                         timeout=60).stdout
    return {q["name"]: q["type"] for q in json.loads(out)}


def test_every_queue_is_a_quorum_queue_and_commands_flow(quorum_env, engine):
    w = Worker(quorum_env, modules=["tests.e2e.poison_actors"]).start()
    try:
        types = queue_types(quorum_env.vhost)
        for q in [*QUEUES, POISON_QUEUE]:
            for name in (q, f"{q}.DQ", f"{q}.XQ"):
                assert types.get(name) == "quorum", (name, types.get(name))
        user = uid()
        send(quorum_env, "deposit", request_id=uid("r"), user_id=user, currency="NGN", amount=321,
             reference="quorum")

        def balance():
            with engine.connect() as conn:
                return conn.execute(text("SELECT balance FROM accounts WHERE code = :c"),
                                    {"c": f"user:{user}:NGN"}).scalar_one_or_none()

        wait_until(lambda: balance() == 321, what="the deposit on a quorum queue")
        marker = uid("q-poison")
        publish_raw(quorum_env, "ballast.wallets", json.dumps(
            {"queue_name": "ballast.wallets", "actor_name": ["x"], "args": [], "kwargs": {"m": marker},
             "options": {}}).encode())
        letter = wait_until(lambda: [d for d in rabbit.list_dead_letters("ballast.wallets", 100, quorum_env.broker_url)
                                     if marker in json.dumps(d.body)], what="the refused envelope")[0]
        assert letter.summary()["reason"].startswith("invalid payload: actor_name")
    finally:
        w.stop()


def test_a_message_that_kills_its_worker_every_time_is_stopped_by_the_delivery_limit(quorum_env):
    key = uid("crash")
    msg = dramatiq.Message(queue_name=POISON_QUEUE, actor_name="crash_the_worker", args=(),
                           kwargs={"key": key}, options={})
    publish_raw(quorum_env, POISON_QUEUE, json.dumps(msg.asdict()).encode())

    def letters():
        return [d for d in rabbit.list_dead_letters(POISON_QUEUE, 100, quorum_env.broker_url)
                if d.message_id == msg.message_id]

    w = Worker(quorum_env, queues=[POISON_QUEUE], modules=["tests.e2e.poison_actors"])
    starts = 0
    try:
        while not letters() and starts < 5:
            w.start(wait=False)
            starts += 1
            wait_until(lambda: not w.alive or letters(), timeout=60, what="the crash or the dead letter")
            w.stop()
        found = letters()
        assert found, f"not dead-lettered after {starts} worker starts"
        assert "delivery_limit" in found[0].summary()["reason"]
        assert starts <= 3  # the limit (1 redelivery), not the test's patience, stopped it
    finally:
        w.stop()
