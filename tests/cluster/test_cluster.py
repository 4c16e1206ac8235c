"""A real three-node RabbitMQ cluster (bin/rabbit-cluster) with quorum queues: a node is
stopped under a steady load of deposits and withdrawals, then brought back.  Nothing is lost,
nothing is doubled, every event is published, the ledger checks out, and the workers and the
scheduler carry on without a restart (issue 16, "A highly available broker")."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import dramatiq
import httpx
import pika
import pytest
from sqlalchemy import text

from domain.markets import Commitment, Outcome, distribute
from infra.settings import get_settings, with_vhost
from tests.harness import ROOT, Worker, _signed, uid, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.timeout(900)]

SCRIPT = ROOT / "bin" / "rabbit-cluster"
API_URLS = ",".join(f"http://127.0.0.1:{15700 + n}" for n in (1, 2, 3))
TAP = "cluster-test.events"
OPTIONS = [{"option_id": "red", "label": "Red"}, {"option_id": "green", "label": "Green"},
           {"option_id": "blue", "label": "Blue"}]
FUND = 1_000_000


def _rabbitmq_installed() -> bool:
    return Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists() or bool(
        shutil.which("rabbitmq-server"))


def cluster(*args: str) -> str:
    done = subprocess.run([str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"bin/rabbit-cluster {' '.join(args)}: {done.stderr[-2000:]}"
    return done.stdout


def api(path: str, method: str = "GET", **kw):
    """The management API of the first node that answers."""
    last = None
    for base in API_URLS.split(","):
        try:
            r = httpx.request(method, f"{base}/api{path}", auth=("guest", "guest"), timeout=5, **kw)
            r.raise_for_status()
            return r.json() if r.content else None
        except httpx.HTTPError as exc:
            last = exc
    raise AssertionError(f"no management API answers: {last}")


@pytest.fixture(scope="module")
def cluster_env(env):
    """The run's database and Redis, on a vhost of the three-node cluster, quorum queues."""
    if not _rabbitmq_installed():
        pytest.skip("rabbitmq-server is not installed here: the cluster test needs it "
                    "(apt-get install rabbitmq-server)")
    # One cluster on the machine at a time: other checkouts' suites use the same ports.
    lock = open(os.path.join(tempfile.gettempdir(), "ballast-rabbit-cluster.lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    cluster("start")
    vhost = f"{env.vhost}_ha"
    v = quote(vhost, safe="")
    api(f"/vhosts/{v}", "PUT", json={"description": "ballast cluster test"})
    api(f"/permissions/{v}/guest", "PUT", json={"configure": ".*", "write": ".*", "read": ".*"})
    urls = with_vhost(cluster("urls").strip(), vhost)
    extra = {**env.extra, "BALLAST_QUEUE_TYPE": "quorum", "BALLAST_RABBITMQ_API_URL": API_URLS}
    cenv = dataclasses.replace(env, broker_url=urls, vhost=vhost, extra=extra)
    saved = {k: os.environ.get(k) for k in ("BALLAST_BROKER_URL", "BALLAST_QUEUE_TYPE",
                                            "BALLAST_RABBITMQ_API_URL")}
    os.environ.update(BALLAST_BROKER_URL=urls, BALLAST_QUEUE_TYPE="quorum",
                      BALLAST_RABBITMQ_API_URL=API_URLS)
    get_settings.cache_clear()
    try:
        yield cenv
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old
        get_settings.cache_clear()
        for n in (1, 2, 3):  # a node the test stopped comes back before the vhost goes
            cluster("start-node", str(n))
        try:
            api(f"/vhosts/{v}", "DELETE")
            cluster("stop")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()


class Load:
    """A steady stream of signed commands, published the way an upstream app must: with a
    confirm, and published again (the same message, the same request id) until one comes."""

    def __init__(self, env, rate_per_s: float = 15.0) -> None:
        self.env = env
        self.interval = 1.0 / rate_per_s
        self.sent: list[dict] = []  # kwargs and actor of every confirmed command
        self.republished = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._broker = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _publish(self, queue: str, body: bytes) -> None:
        from infra.broker import build_broker

        while True:
            try:
                if self._broker is None:
                    self._broker = build_broker(self.env.broker_url)
                self._broker.channel.basic_publish(
                    exchange="", routing_key=queue, body=body,
                    properties=pika.BasicProperties(delivery_mode=2), mandatory=True)
                return
            except Exception:
                self.republished += 1
                try:
                    self._broker.close()
                except Exception:
                    pass
                self._broker = None
                time.sleep(0.5)

    def send(self, actor: str, queue: str, **kwargs) -> None:
        msg = dramatiq.Message(queue_name=queue, actor_name=actor, args=(), kwargs=kwargs,
                               options={})
        self._publish(queue, _signed(self.env, json.dumps(msg.asdict()).encode()))
        self.sent.append({"actor": actor, **kwargs})

    def _run(self) -> None:
        try:
            i = 0
            while not self.stop.is_set():
                user = self.users[i % len(self.users)]
                if i % 5 == 2:  # a wager on the market (another capability, another queue)
                    self.send("place_commitment", "ballast.markets", request_id=uid("hc"),
                              commitment_id=uid("c"), market_id=self.market,
                              user_id=self.market_users[i % len(self.market_users)],
                              amount=50 + i, option_id=OPTIONS[i % 3]["option_id"])
                elif i % 4 == 3:
                    self.send("withdraw", "ballast.wallets", request_id=uid("hw"), user_id=user,
                              currency="NGN", amount=100 + i, reference=f"ha-w-{i}")
                else:
                    self.send("deposit", "ballast.wallets", request_id=uid("hd"), user_id=user,
                              currency="NGN", amount=1_000 + i, reference=f"ha-d-{i}")
                i += 1
                self.stop.wait(self.interval)
        except BaseException as exc:  # pragma: no cover - reported by the test
            self.error = exc

    def start(self, users: list[str], market: str, market_users: list[str]) -> "Load":
        self.users, self.market, self.market_users = users, market, market_users
        self.thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=120)
        if self._broker is not None:
            self._broker.close()
        assert self.error is None, self.error


def worker_nodes(vhost: str) -> Counter:
    """Which node each AMQP connection of the vhost is on."""
    rows = api(f"/vhosts/{quote(vhost, safe='')}/connections") or []
    return Counter(r["node"] for r in rows)


def market_status(engine, market_id: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(text("SELECT status FROM markets WHERE market_id = :m"),
                            {"m": market_id}).scalar_one_or_none()


def account(engine, code: str) -> int:
    from infra import ledger

    with engine.connect() as conn:
        return ledger.balances(conn, [code]).get(code, 0)


def node_number(node: str) -> str:
    return node.split("@")[0].removeprefix("ballast-ha")


def test_a_node_lost_under_load_loses_nothing_and_doubles_nothing(cluster_env, engine):
    env = cluster_env
    started = time.monotonic()
    with engine.connect() as conn:
        floor = conn.execute(text("SELECT coalesce(max(id), 0) FROM outbox")).scalar_one()

    # Every event, as an upstream app would subscribe: a durable quorum queue on ballast.events.
    from infra import rabbit

    with rabbit.connection(env.broker_url) as conn:
        ch = conn.channel()
        ch.exchange_declare("ballast.events", exchange_type="topic", durable=True)
        ch.queue_declare(TAP, durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_bind(TAP, "ballast.events", routing_key="#")

    worker = Worker(env, processes=1, threads=4).start()
    scheduler_log = open(Path(env.fault_dir) / f"scheduler-{uuid.uuid4().hex[:6]}.log", "ab")
    scheduler = subprocess.Popen([sys.executable, "-m", "infra.cli.main", "scheduler"], cwd=ROOT,
                                 env=env.environ(), stdout=scheduler_log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    load = Load(env)
    try:
        queues = {q["name"]: q.get("type") for q in api(f"/queues/{quote(env.vhost, safe='')}")}
        assert queues["ballast.wallets"] == "quorum" and queues["ballast.wallets.XQ"] == "quorum"

        users = [uid("ha") for _ in range(6)]
        market_users = [uid("hm") for _ in range(4)]
        for user in users + market_users:  # funds for the withdrawals and wagers to come
            load.send("deposit", "ballast.wallets", request_id=uid("hf"), user_id=user,
                      currency="NGN", amount=FUND, reference=f"ha-fund-{user}")
        market = uid("hamkt")
        load.send("open_market", "ballast.markets", request_id=uid("ho"), market_id=market,
                  title="cluster", kind="multi", options=OPTIONS, currency="NGN",
                  creator_id="maker", creator_fee_bps=200)
        wait_until(lambda: market_status(engine, market) == "open", 60, what="the market open")
        load.start(users, market, market_users)
        wait_until(lambda: len(load.sent) >= 90, 60, what="load under way")

        # Stop the node most of Ballast's connections (the workers', the scheduler's) are on.
        nodes = wait_until(lambda: worker_nodes(env.vhost), 30, what="connections listed")
        victim = nodes.most_common(1)[0][0]
        cluster("stop-node", node_number(victim))
        sent_at_stop = len(load.sent)

        # The workers and the scheduler reconnect on their own, to the surviving nodes.
        wait_until(lambda: (n := worker_nodes(env.vhost)) and victim not in n
                   and sum(n.values()) >= 2, 120, what="connections on the surviving nodes")
        wait_until(lambda: len(load.sent) >= sent_at_stop + 150, 120, what="load during the loss")

        cluster("start-node", node_number(victim))
        back_at = time.time()
        sent_at_back = len(load.sent)
        wait_until(lambda: len(load.sent) >= sent_at_back + 90, 120, what="load after the return")
        load.finish()
        assert worker.alive and scheduler.poll() is None  # never restarted

        # Every command applied exactly once.
        sent = load.sent
        rids = [s["request_id"] for s in sent]
        assert len(set(rids)) == len(rids)

        def processed() -> int:
            with engine.connect() as conn:
                return conn.execute(text(
                    "SELECT count(*) FROM processed_requests WHERE request_id = ANY(:r)"),
                    {"r": rids}).scalar_one()
        wait_until(lambda: processed() == len(rids), 180, interval=1,
                   what=f"all {len(rids)} commands processed")
        wallet = [s for s in sent if s["actor"] in ("deposit", "withdraw")]
        wagers = [s for s in sent if s["actor"] == "place_commitment"]
        assert len(wagers) >= 50
        with engine.connect() as conn:
            per_ref = dict(conn.execute(text(
                "SELECT memo, count(*) FROM ledger_transactions WHERE memo LIKE 'ha-%' "
                "AND memo = ANY(:m) GROUP BY memo"),
                {"m": [s["reference"] for s in wallet]}).all())
            balances = dict(conn.execute(text(
                "SELECT code, balance FROM accounts WHERE code = ANY(:c)"),
                {"c": [f"user:{u}:NGN" for u in users]}).all())
            placed = dict(conn.execute(text(
                "SELECT commitment_id, amount FROM market_commitments WHERE market_id = :m"),
                {"m": market}).all())
        assert per_ref == {s["reference"]: 1 for s in wallet}  # nothing lost, nothing doubled
        expected = Counter()
        for s in wallet:
            if s["user_id"] in users:
                expected[f"user:{s['user_id']}:NGN"] += s["amount"] * (
                    -1 if s["actor"] == "withdraw" else 1)
        assert balances == dict(expected)
        assert placed == {s["commitment_id"]: s["amount"] for s in wagers}  # each wager once
        assert account(engine, f"escrow:market:{market}") == sum(placed.values())

        # The market settles through its step queue, now the node is back.
        load.send("resolve_market", "ballast.markets", request_id=uid("hr"), market_id=market,
                  winning_option_id="red", resolved_by="ops")
        wait_until(lambda: market_status(engine, market) == "settled", 120, interval=1,
                   what="the market settled")
        outcome = distribute([Commitment(s["commitment_id"], s["user_id"], s["option_id"],
                                         s["amount"]) for s in wagers],
                             Outcome.winner("red"), 500, 200)
        for u in market_users:
            staked = sum(s["amount"] for s in wagers if s["user_id"] == u)
            assert account(engine, f"user:{u}:NGN") == (
                FUND - staked + outcome.payouts_by_user().get(u, 0)), u
        assert account(engine, f"escrow:market:{market}") == 0

        # Every event published (the sweeper, fired by the scheduler, publishes what a lost
        # connection left behind) and every one of them reached the subscriber.
        def unpublished() -> int:
            with engine.connect() as conn:
                return conn.execute(text(
                    "SELECT count(*) FROM outbox WHERE id > :f AND published_at IS NULL"),
                    {"f": floor}).scalar_one()
        wait_until(lambda: unpublished() == 0, 120, interval=1, what="outbox published")
        with engine.connect() as conn:
            event_ids = {r[0] for r in conn.execute(text(
                "SELECT body->>'event_id' FROM outbox WHERE id > :f AND kind = 'event'"),
                {"f": floor})}
            changed = conn.execute(text(
                "SELECT count(*) FROM outbox WHERE id > :f AND kind = 'event' "
                "AND event_name = 'wallet.changed' AND body->'data'->>'user_id' = ANY(:u)"),
                {"f": floor, "u": users}).scalar_one()
        # one wallet.changed per wallet command (the funding deposits included)
        assert changed == len([s for s in wallet if s["user_id"] in users])
        seen: set[str] = set()

        def drain() -> bool:
            with rabbit.connection(env.broker_url) as conn:
                ch = conn.channel()
                while True:
                    method, _, body = ch.basic_get(TAP, auto_ack=True)
                    if method is None:
                        break
                    seen.add(json.loads(body)["event_id"])
            return event_ids <= seen
        wait_until(drain, 60, interval=1, what="every event at the subscriber")

        # The scheduler still fires after the node came back, and the worker processes what
        # it fires (the outbox sweep, every 10 s: a slot later than the return).
        def fired_since() -> list[str]:
            done = []
            for line in worker.log().splitlines():
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                rid = doc.get("request_id") or ""
                if (doc.get("event") == "message.processed" and doc.get("actor") == "sweep_outbox"
                        and rid.startswith("schedule:outbox_sweep:")
                        and int(rid.rsplit(":", 1)[1]) > back_at):
                    done.append(rid)
            return done
        wait_until(fired_since, 60, interval=1, what="a firing after the return, processed")
        assert scheduler.poll() is None and worker.alive

        check = subprocess.run([sys.executable, "-m", "infra.cli.main", "ledger", "check", "--json"],
                               cwd=ROOT, env=env.environ(), capture_output=True, text=True,
                               timeout=120)
        assert check.returncode == 0 and json.loads(check.stdout)["ok"] is True, check.stdout
        print(f"cluster test: {len(sent)} commands, {load.republished} republished, "
              f"node {victim} lost and back, {time.monotonic() - started:.0f}s")
    finally:
        load.stop.set()
        worker.stop()
        scheduler.terminate()
        try:
            scheduler.wait(timeout=30)
        except subprocess.TimeoutExpired:
            scheduler.kill()
        scheduler_log.close()
