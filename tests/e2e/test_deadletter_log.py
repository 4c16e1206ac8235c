"""Durable dead letters through a real worker: recorded in PostgreSQL when dead-lettered,
listed with filters, shown after RabbitMQ lost its copy, replays and purges recorded with
who and when; the XQ retention is configurable."""

from __future__ import annotations

import json
import subprocess
import sys
from urllib.parse import quote

import pytest
from dramatiq.common import xq_name
from sqlalchemy import text

from infra import rabbit, rabbit_admin
from tests.harness import CLI_OPERATOR, ROOT, amqp, send, uid, wait_until

pytestmark = pytest.mark.e2e


def cli(env, *args: str, **overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infra.cli.main", *args], cwd=ROOT,
                          env=env.environ(**overrides), capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def cli_json(env, *args: str):
    done = cli(env, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def logged(engine, request_id: str) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(
            "SELECT * FROM dead_letters WHERE request_id = :r ORDER BY id"), {"r": request_id})]


def refused_withdrawal(env, engine) -> tuple[str, dict]:
    rid = uid("r")
    # Beyond the bronze credit line: refused, dead-lettered at once.
    send(env, "withdraw", request_id=rid, user_id=uid(), currency="USD", amount=1_500_000,
         reference="out")
    [row] = wait_until(lambda: logged(engine, rid), what="the dead letter in the log")
    wait_until(lambda: rabbit.find_dead_letter(row["message_id"], env.broker_url),
               what="the dead letter in Q.XQ")
    return rid, row


def test_every_dead_letter_is_recorded_with_reason_traceback_body_and_retries(env, engine, worker):
    rid, row = refused_withdrawal(env, engine)
    assert (row["queue"], row["actor"], row["code"], row["status"], row["retries"]) == (
        "ballast.wallets", "withdraw", "balance_refused", "dead", 0)
    assert "refused by min_balance" in row["reason"]
    assert row["traceback"] and "Refused" in row["traceback"]
    assert row["body"]["kwargs"]["request_id"] == rid
    assert row["body"]["options"]["dead_letter"]["reason"] == row["reason"]
    in_rabbit = rabbit.find_dead_letter(row["message_id"], env.broker_url).summary()
    assert in_rabbit["reason"] == row["reason"]


def test_dlq_list_filters_by_actor_code_time_and_text(env, engine, worker):
    rid, row = refused_withdrawal(env, engine)
    word = row["reason"].split()[0]

    def ids(*args):
        return {r["request_id"] for r in cli_json(env, "dlq", "list", *args)}

    for source in ([], ["--history"]):
        assert rid in ids(*source, "--actor", "withdraw")
        assert rid not in ids(*source, "--actor", "deposit")
        assert rid in ids(*source, "--code", "balance_refused")
        assert rid not in ids(*source, "--code", "transient")
        assert rid in ids(*source, "--since", "1h")
        assert rid not in ids(*source, "--since", "2999-01-01T00:00:00")
        assert rid in ids(*source, "--grep", rid)  # the body's request id
        assert rid in ids(*source, "--grep", word.upper())
        assert rid not in ids(*source, "--grep", uid("nothing"))
    [hist] = [r for r in cli_json(env, "dlq", "list", "--history") if r["request_id"] == rid]
    assert {"queue", "message_id", "actor", "request_id", "reason", "retries", "failed_at",
            "code", "status", "resolved_by", "resolved_at"} == set(hist)
    assert (hist["status"], hist["resolved_by"]) == ("dead", None)
    bad = cli(env, "dlq", "list", "--since", "yesterday-ish")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_a_dead_letter_rabbitmq_no_longer_holds_is_still_shown_from_the_log(env, engine, worker):
    rid, row = refused_withdrawal(env, engine)
    conn = amqp(env)  # as if its x-message-ttl had passed
    try:
        conn.channel().queue_purge(xq_name("ballast.wallets"))
    finally:
        conn.close()
    assert rabbit.find_dead_letter(row["message_id"], env.broker_url) is None
    shown = cli_json(env, "dlq", "show", row["message_id"])
    assert (shown["source"], shown["status"], shown["reason"]) == ("log", "dead", row["reason"])
    assert shown["message"]["kwargs"]["request_id"] == rid and shown["traceback"]
    human = cli(env, "dlq", "show", row["message_id"])
    assert human.stdout.count("Traceback (most recent call last)") == 1  # printed once


def test_replay_and_purge_record_who_and_when(env, engine, worker):
    rid, row = refused_withdrawal(env, engine)
    done = cli_json(env, "dlq", "replay", "ballast.wallets", "--id", row["message_id"], "--by", CLI_OPERATOR)
    assert done["replayed"] == 1
    [first, *again] = wait_until(lambda: logged(engine, rid)[0]["status"] == "replayed"
                                 and logged(engine, rid), what="the replay recorded")
    assert (first["status"], first["resolved_by"]) == ("replayed", CLI_OPERATOR)
    assert first["resolved_at"] is not None
    # Still refused (nothing changed its cause): a second death is a second record.
    wait_until(lambda: len(logged(engine, rid)) == 2, what="the second death")
    assert logged(engine, rid)[1]["status"] == "dead"

    done = cli_json(env, "dlq", "purge", "ballast.wallets", "--by", CLI_OPERATOR, "--yes")
    assert done["purged"] >= 1
    last = logged(engine, rid)[1]
    assert (last["status"], last["resolved_by"]) == ("purged", CLI_OPERATOR)
    with engine.connect() as conn:
        who = conn.execute(text("SELECT performed_by FROM operator_actions WHERE command = "
                                "'dlq purge' ORDER BY id DESC LIMIT 1")).scalar_one()
    assert who == CLI_OPERATOR


def test_the_dead_letter_retention_in_rabbitmq_is_configurable(env):
    from infra.broker import build_broker, declare_topology
    from infra.settings import get_settings

    vhost = f"ballast_test_ttl_{uid().lower()}"
    rabbit_admin.create_vhost(vhost, "test")
    url = env.broker_url.rsplit("/", 1)[0] + "/" + quote(vhost, safe="")
    try:
        import os
        os.environ["BALLAST_DEAD_LETTER_TTL_MS"] = "3600000"
        get_settings.cache_clear()
        try:
            broker = build_broker(url)
            declare_topology(broker)
            broker.close()
        finally:
            del os.environ["BALLAST_DEAD_LETTER_TTL_MS"]
            get_settings.cache_clear()
        out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "arguments",
                              "--formatter", "json"], capture_output=True, text=True, timeout=60)
        queues = {q["name"]: q["arguments"] for q in json.loads(out.stdout)}
        ttl = queues[xq_name("ballast.wallets")]
        ttl = dict(ttl) if isinstance(ttl, dict) else {a[0]: a[2] for a in ttl}
        assert ttl["x-message-ttl"] == 3_600_000
    finally:
        rabbit_admin.delete_vhost(vhost)


def test_a_dead_letter_rabbitmq_expired_is_replayed_from_the_log(env, engine, worker):
    rid, row = refused_withdrawal(env, engine)
    user = row["body"]["kwargs"]["user_id"]
    conn = amqp(env)  # as if its x-message-ttl had passed
    try:
        conn.channel().queue_purge(xq_name("ballast.wallets"))
    finally:
        conn.close()
    send(env, "deposit", request_id=uid("r"), user_id=user, currency="USD", amount=1_000_000,
         reference="in")  # the cause, fixed

    def balance():
        with engine.connect() as c:
            return c.execute(text("SELECT balance FROM accounts WHERE code = :c"),
                             {"c": f"user:{user}:USD"}).scalar_one_or_none()

    wait_until(lambda: balance() == 1_000_000, what="the deposit")
    dry = cli_json(env, "dlq", "replay", "--id", row["message_id"], "--by", CLI_OPERATOR, "--dry-run")
    assert dry["would_replay"] == 1 and dry["queues"] == {"ballast.wallets": 1}
    done = cli_json(env, "dlq", "replay", "--id", row["message_id"], "--by", CLI_OPERATOR)
    assert done == {"replayed": 1, "queues": {"ballast.wallets": 1}}
    wait_until(lambda: balance() == -500_000, what="the withdrawal replayed from the log")
    [record] = logged(engine, rid)
    assert (record["status"], record["resolved_by"]) == ("replayed", CLI_OPERATOR)


def test_a_malformed_envelope_refused_before_dramatiq_is_recorded_too(env, engine, worker):
    """The envelope check's refusals (infra/broker.py) are dead letters like any other: the
    durable log holds them with their reason, not only RabbitMQ's Q.XQ copy."""
    import pika

    marker = uid("malformed")
    body = {"queue_name": "ballast.wallets", "actor_name": "deposit", "args": [],
            "kwargs": {"request_id": marker, "user_id": uid(), "currency": "NGN", "amount": 1,
                       "reference": "x"}, "options": ["a"], "message_id": uid("m"),
            "message_timestamp": 1}
    conn = amqp(env)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(exchange="", routing_key="ballast.wallets", body=json.dumps(body).encode(),
                         properties=pika.BasicProperties(delivery_mode=2), mandatory=True)
    finally:
        conn.close()
    [row] = wait_until(lambda: logged(engine, marker), what="the durable dead letter")
    assert row["reason"].startswith("invalid payload: ")
    assert "options must be a JSON object, not a list" in row["reason"]
    assert row["code"] == "invalid" and row["queue"] == "ballast.wallets"
