"""`ballast queues migrate --to quorum`: an install's classic queues become quorum queues
with every message kept — commands waiting, a delayed retry, a dead letter — and processed
after (issue 16, "a documented, tested migration from today's classic queues")."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
import uuid
from urllib.parse import quote

import dramatiq
import pytest
from sqlalchemy import text

from infra import rabbit, rabbit_admin
from infra.contract import QUEUES
from infra.settings import get_settings, with_vhost
from tests.harness import CLI_OPERATOR, ROOT, Worker, publish_raw, uid, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def classic_env(env):
    """The run's database and Redis on a fresh vhost whose queues are classic ones."""
    vhost = f"{env.vhost}_mig{uuid.uuid4().hex[:4]}"
    url = with_vhost(env.broker_url, vhost)
    rabbit_admin.create_vhost(vhost, "ballast migration test", url)
    menv = dataclasses.replace(env, broker_url=url, vhost=vhost,
                               extra={**env.extra, "BALLAST_QUEUE_TYPE": "classic"})
    yield menv
    rabbit_admin.delete_vhost(vhost, url)
    get_settings.cache_clear()


def cli(env, *args: str, **overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infra.cli.main", *args], cwd=ROOT,
                          env=env.environ(**overrides), capture_output=True, text=True,
                          timeout=180)


def types(vhost: str) -> dict[str, str]:
    found = rabbit_admin.api_get(f"/queues/{quote(vhost, safe='')}", columns="name,type")
    if found is None:  # no management API: rabbitmqctl on this host
        out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "type",
                              "--formatter", "json"], check=True, capture_output=True,
                             text=True, timeout=60).stdout
        found = json.loads(out)
    return {q["name"]: q["type"] for q in found}


def deposit_body(queue: str, user: str, amount: int, ref: str, **options) -> bytes:
    msg = dramatiq.Message(queue_name=queue, actor_name="deposit", args=(),
                           kwargs={"request_id": uid("mr"), "user_id": user, "currency": "NGN",
                                   "amount": amount, "reference": ref}, options=options)
    return json.dumps(msg.asdict()).encode()


def test_classic_queues_become_quorum_queues_with_every_message_kept(classic_env, engine):
    env = classic_env
    # The install as it is today: classic queues (declared as a classic worker would).
    assert cli(env, "migrate").returncode == 0
    assert types(env.vhost)["ballast.wallets"] == "classic"
    user = uid("mig")
    waiting = 25
    for i in range(waiting):  # commands waiting in the queue, no worker running
        publish_raw(env, "ballast.wallets", deposit_body("ballast.wallets", user, 100 + i, f"mig-{i}"))
    # A delayed retry (held in Q.DQ until its eta) and a dead letter (in Q.XQ).
    publish_raw(env, "ballast.wallets.DQ", deposit_body(
        "ballast.wallets.DQ", user, 7_000, "mig-delayed",
        eta=int(time.time() * 1000) + 1_000, retries=1))
    dead = json.loads(deposit_body("ballast.wallets", user, 9, "mig-dead"))
    dead["options"]["dead_letter"] = {"reason": "invalid payload: kept across the migration",
                                      "code": "invalid"}
    publish_raw(env, "ballast.wallets.XQ", json.dumps(dead).encode(), sign=False)
    counts = {r["queue"]: r for r in rabbit.queue_stats(env.broker_url)}
    assert (counts["ballast.wallets"]["ready"], counts["ballast.wallets"]["delayed"],
            counts["ballast.wallets"]["dead"]) == (waiting, 1, 1)

    # The dry run says what it would do and changes nothing.
    done = cli(env, "queues", "migrate", "--to", "quorum", "--by", CLI_OPERATOR, "--dry-run",
               "--json")
    assert done.returncode == 0, done.stderr
    dry = json.loads(done.stdout)
    assert dry["dry_run"] is True and dry["would_migrate"] == 3 * len(QUEUES)
    assert dry["would_move"] == waiting + 2
    assert types(env.vhost)["ballast.wallets"] == "classic"

    # Quorum settings on classic queues: `ballast migrate` says what to do, in one line.
    done = cli(env, "migrate", BALLAST_QUEUE_TYPE="quorum")
    assert done.returncode == 1, done.stderr
    # (pika logs the broker's refusal as JSON lines; the error itself is one plain line)
    plain = [ln for ln in done.stderr.strip().splitlines() if not ln.startswith("{")]
    assert len(plain) == 1 and "ballast queues migrate --to quorum" in plain[0], done.stderr

    # Without --yes off a terminal: refused, nothing changes.
    done = cli(env, "queues", "migrate", "--to", "quorum", "--by", CLI_OPERATOR)
    assert done.returncode == 2 and "--yes" in done.stderr
    assert types(env.vhost)["ballast.wallets"] == "classic"

    done = cli(env, "queues", "migrate", "--to", "quorum", "--by", CLI_OPERATOR, "--yes", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["migrated"] == 3 * len(QUEUES) and out["moved"] == waiting + 2
    after = types(env.vhost)
    for q in QUEUES:
        for name in (q, f"{q}.DQ", f"{q}.XQ"):
            assert after[name] == "quorum", (name, after[name])
    assert not [n for n in after if n.endswith(".migrating")]  # no holding queue left
    counts = {r["queue"]: r for r in rabbit.queue_stats(env.broker_url)}
    assert (counts["ballast.wallets"]["ready"], counts["ballast.wallets"]["delayed"],
            counts["ballast.wallets"]["dead"]) == (waiting, 1, 1)
    with engine.connect() as conn:
        logged = conn.execute(text(
            "SELECT performed_by, detail->>'moved' FROM operator_actions "
            "WHERE command = 'queues migrate' ORDER BY id DESC LIMIT 1")).one()
    assert tuple(logged) == (CLI_OPERATOR, str(waiting + 2))

    # Twice changes nothing.
    again = json.loads(cli(env, "queues", "migrate", "--to", "quorum", "--by", CLI_OPERATOR,
                           "--yes", "--json").stdout)
    assert again["migrated"] == 0

    # Quorum workers process every kept command (the delayed one too); the dead letter is
    # still there with its reason.
    quorum = dataclasses.replace(env, extra={**env.extra, "BALLAST_QUEUE_TYPE": "quorum"})
    w = Worker(quorum).start()
    try:
        expected = sum(100 + i for i in range(waiting)) + 7_000

        def balance():
            with engine.connect() as conn:
                return conn.execute(text("SELECT balance FROM accounts WHERE code = :c"),
                                    {"c": f"user:{user}:NGN"}).scalar_one_or_none()
        wait_until(lambda: balance() == expected, 90, what="every kept deposit processed")
        with engine.connect() as conn:
            n = conn.execute(text("SELECT count(*) FROM ledger_transactions WHERE memo LIKE 'mig-%' "
                                  "AND memo IN (SELECT 'mig-' || g FROM generate_series(0, 100) g "
                                  "UNION SELECT 'mig-delayed')")).scalar_one()
        assert n == waiting + 1
        letters = [d.summary() for d in rabbit.list_dead_letters("ballast.wallets", 100, env.broker_url)]
        assert [d["reason"] for d in letters] == ["invalid payload: kept across the migration"]
    finally:
        w.stop()


def test_a_migration_is_refused_while_a_worker_consumes(classic_env):
    env = classic_env
    w = Worker(env).start()
    try:
        done = cli(env, "queues", "migrate", "--to", "quorum", "--by", CLI_OPERATOR, "--yes")
        assert done.returncode == 1
        assert "consumer" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    finally:
        w.stop()
    assert types(env.vhost)["ballast.wallets"] == "classic"


def test_quorum_queues_go_back_to_classic_with_their_messages(classic_env):
    env = classic_env
    assert cli(env, "migrate", BALLAST_QUEUE_TYPE="quorum").returncode == 0
    assert types(env.vhost)["ballast.wallets"] == "quorum"
    user = uid("back")
    import pika

    from tests.harness import _signed

    with rabbit.connection(env.broker_url) as conn:  # plain AMQP: this process is classic
        ch = conn.channel()
        ch.confirm_delivery()
        for i in range(5):
            ch.basic_publish("", "ballast.wallets", _signed(env, deposit_body(
                "ballast.wallets", user, 10 + i, f"back-{i}")),
                properties=pika.BasicProperties(delivery_mode=2), mandatory=True)
    done = cli(env, "queues", "migrate", "--to", "classic", "--by", CLI_OPERATOR, "--yes",
               "--json", BALLAST_QUEUE_TYPE="quorum")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["moved"] == 5
    after = types(env.vhost)
    assert {after[n] for q in QUEUES for n in (q, f"{q}.DQ", f"{q}.XQ")} == {"classic"}
    counts = {r["queue"]: r for r in rabbit.queue_stats(env.broker_url)}
    assert counts["ballast.wallets"]["ready"] == 5
    assert cli(env, "migrate").returncode == 0  # classic settings fit them again
