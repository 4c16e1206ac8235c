"""Test harness on the real services: an own database, vhost and Redis db per run,
real worker processes, sending, waiting, killing.

Every pytest run gets ``ballast_test_<id>`` (PostgreSQL), the vhost
``ballast_test_<id>`` (RabbitMQ) and a Redis db other than 0; the defaults
named in CONTRACT.md are never touched.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import dramatiq
import pika

from infra import rabbit_admin

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class TestEnv:
    run_id: str
    database_url: str
    broker_url: str
    redis_url: str
    vhost: str
    fault_dir: str
    extra: dict[str, str] = field(default_factory=dict)

    def environ(self, **overrides: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            BALLAST_DATABASE_URL=self.database_url,
            BALLAST_BROKER_URL=self.broker_url,
            BALLAST_REDIS_URL=self.redis_url,
            BALLAST_FAULT_DIR=self.fault_dir,
            BALLAST_METRICS_PORT="0",
            BALLAST_SCHEDULER_METRICS_PORT="0",
            BALLAST_LOG_LEVEL="INFO",
            BALLAST_RETRY_MIN_BACKOFF_MS="200",
            BALLAST_RETRY_MAX_BACKOFF_MS="2000",
            BALLAST_AUTH="require",  # every test runs with signatures required
            PYTHONPATH=str(ROOT),
        )
        env.update(self.extra)
        env.update(overrides)
        return env


def create_env(prefix: str = "ballast_test") -> TestEnv:
    """Create the run's own database (migrated), vhost and Redis db, named ``{prefix}_<id>``."""
    from infra.db.migrate import upgrade

    run_id = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
    name = f"{prefix}_{run_id}"
    host = os.getenv("BALLAST_TEST_PG", "postgres@127.0.0.1:5432")
    database_url = f"postgresql+psycopg://{host}/{name}"
    amqp_host = os.getenv("BALLAST_TEST_AMQP", "guest:guest@127.0.0.1:5672")
    broker_url = f"amqp://{amqp_host}/{quote(name, safe='')}"
    # The management API when it is reachable (a broker in a container), else rabbitmqctl.
    rabbit_admin.create_vhost(name, "ballast test run", broker_url)
    redis_db = random.randint(1, 14)  # 15 is the demo's (infra/demo/target.py)
    redis_url = f"redis://127.0.0.1:6379/{redis_db}"
    env = TestEnv(run_id, database_url, broker_url, redis_url, name,
                  tempfile.mkdtemp(prefix=f"ballast-faults-{run_id}-"))
    upgrade(database_url)
    _make_keys(env)
    return env


#: The roles of the operator the CLI signs as (``ballast send`` of any upstream command).
CLI_OPERATOR = "test-cli"
CLI_OPERATOR_ROLES = ("operator", "wagering", "funding", "journal")


def _make_keys(env: TestEnv) -> None:
    """Ballast's own key and the CLI operator's, each in a file only its owner reads, named
    by BALLAST_SIGNING_KEY_FILE and BALLAST_OPERATOR_KEY_FILE for every process of the run."""
    from sqlalchemy import create_engine

    from infra import auth

    keydir = tempfile.mkdtemp(prefix=f"ballast-keys-{env.run_id}-")
    engine = create_engine(env.database_url)
    try:
        with engine.begin() as conn:
            for var, signer, roles in (
                ("BALLAST_SIGNING_KEY_FILE", auth.Signer.generate(auth.BALLAST), ("ballast",)),
                ("BALLAST_OPERATOR_KEY_FILE", auth.Signer.generate(CLI_OPERATOR), CLI_OPERATOR_ROLES),
            ):
                path = os.path.join(keydir, f"{signer.producer}.key")
                auth.write_key_file(path, signer)
                auth.register_key(conn, signer, roles, by="tests")
                env.extra[var] = path
    finally:
        engine.dispose()


_keyrings: dict[str, Any] = {}


def keyring(env: TestEnv):
    """The run's producers (``test-wagering``, ``test-funding``… and one per identity a test
    names in ``performed_by``/``admin_id``/…), each signing with a key held in memory."""
    from infra import auth
    from infra.db.engine import get_engine

    ring = _keyrings.get(env.run_id)
    if ring is None:
        ballast = auth.load_signer(None, env.extra["BALLAST_SIGNING_KEY_FILE"])
        ring = _keyrings[env.run_id] = auth.Keyring(get_engine(env.database_url), "test", ballast,
                                                     by="tests")
    return ring


def destroy_env(env: TestEnv) -> None:
    from infra.db.engine import dispose_engines
    from infra.db.migrate import drop_database

    dispose_engines()
    try:
        drop_database(env.database_url)
    finally:
        try:
            rabbit_admin.delete_vhost(env.vhost, env.broker_url)
        except Exception:
            pass


def activate(env: TestEnv) -> None:
    """Point this (pytest) process at the run's services."""
    os.environ.update({k: v for k, v in env.environ().items() if k.startswith("BALLAST_")})
    from infra.settings import get_settings

    get_settings.cache_clear()


# --- talking to RabbitMQ -------------------------------------------------------------

def amqp(env: TestEnv) -> pika.BlockingConnection:
    from infra import rabbit

    return pika.BlockingConnection(rabbit.parameters(env.broker_url))


def send(env: TestEnv, actor: str, **kwargs: Any) -> str:
    """Publish a command the way an upstream app would (signed by the producer the policy
    wants, see ``keyring``); returns its message id."""
    from infra.contract import spec_for

    spec = spec_for(actor)
    msg = dramatiq.Message(queue_name=spec.queue, actor_name=actor, args=(), kwargs=kwargs, options={})
    publish_raw(env, spec.queue, json.dumps(msg.asdict()).encode())
    return msg.message_id


def publish_raw(env: TestEnv, queue: str, body: bytes, *, sign: bool = True) -> None:
    """Publish any bytes to a queue (persistent, confirmed).  A Dramatiq envelope without a
    signature is signed first (``sign=False`` publishes it unsigned); other bytes go as they are."""
    from infra.broker import build_broker

    if sign:
        body = _signed(env, body)
    broker = build_broker(env.broker_url)
    try:
        broker.declare_queue(queue, ensure=True)
        ch = broker.channel
        ch.basic_publish(exchange="", routing_key=queue, body=body,
                         properties=pika.BasicProperties(delivery_mode=2), mandatory=True)
    finally:
        broker.close()


def _signed(env: TestEnv, body: bytes) -> bytes:
    from infra.auth import OPTION

    try:
        doc = json.loads(body)
        if (not isinstance(doc, dict) or not isinstance(doc.get("kwargs"), dict)
                or not isinstance(doc.get("actor_name"), str)
                or not isinstance(doc.get("queue_name"), str)
                or not isinstance(doc.get("options", {}), dict)):
            return body  # a malformed envelope goes as it is: the worker must refuse it
        msg = dramatiq.Message(**doc)
    except Exception:
        return body
    if OPTION in (msg.options or {}):
        return body
    return json.dumps(keyring(env).sign(msg).asdict()).encode()


#: Outbox rows up to this id belong to earlier tests (a crash test may leave some
#: for the sweeper on purpose); wait_quiet only waits for rows after it.
_outbox_floor = 0


def purge_all(env: TestEnv) -> None:
    """Empty every queue of the run's vhost; earlier tests' outbox rows stop counting."""
    global _outbox_floor
    from dramatiq.common import dq_name, xq_name
    from sqlalchemy import create_engine, text

    from infra.contract import QUEUES

    engine = create_engine(env.database_url)
    try:
        with engine.connect() as db:
            _outbox_floor = db.execute(text("SELECT coalesce(max(id), 0) FROM outbox")).scalar_one()
    finally:
        engine.dispose()

    conn = amqp(env)
    try:
        for q in QUEUES:
            for name in (q, dq_name(q), xq_name(q)):
                ch = conn.channel()
                try:
                    ch.queue_purge(name)
                    ch.close()
                except pika.exceptions.ChannelClosedByBroker:
                    pass
    finally:
        conn.close()


class EventTap:
    """A private queue bound to ``ballast.events``: what upstream apps would see."""

    def __init__(self, env: TestEnv, pattern: str = "#") -> None:
        self.conn = amqp(env)
        self.ch = self.conn.channel()
        self.ch.exchange_declare("ballast.events", exchange_type="topic", durable=True)
        self.queue = self.ch.queue_declare("", exclusive=True).method.queue
        self.ch.queue_bind(self.queue, "ballast.events", routing_key=pattern)
        self.seen: list[dict[str, Any]] = []

    def drain(self) -> list[dict[str, Any]]:
        while True:
            method, _, body = self.ch.basic_get(self.queue, auto_ack=True)
            if method is None:
                return self.seen
            self.seen.append(json.loads(body))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.drain() if e["event"] == name]

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass


# --- waiting ---------------------------------------------------------------------------

def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2,
               what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except AssertionError:
            raise
        except Exception as exc:  # the service may still be coming up
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" +
                         (f" (last error: {last_exc})" if last_exc else ""))


def wait_quiet(env: TestEnv, timeout: float = 60.0, settle: float = 1.5, outbox: bool = True) -> None:
    """Wait until no queue holds ready or delayed messages and the outbox is
    published, and it stays so for ``settle`` seconds (messages being processed
    are not visible over AMQP, hence the settling time)."""
    from sqlalchemy import create_engine, text

    from infra import rabbit

    engine = create_engine(env.database_url)
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    try:
        while time.monotonic() < deadline:
            stats = rabbit.queue_stats(env.broker_url)
            busy = sum(r["ready"] + r["delayed"] for r in stats)
            with engine.connect() as conn:
                busy += 0 if not outbox else conn.execute(text(
                    "SELECT count(*) FROM outbox WHERE published_at IS NULL AND id > :floor"),
                    {"floor": _outbox_floor}).scalar_one()
            if busy == 0:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= settle:
                    return
            else:
                quiet_since = None
            time.sleep(0.2)
    finally:
        engine.dispose()
    raise AssertionError(f"not quiet after {timeout}s")


# --- worker processes ------------------------------------------------------------------

class Worker:
    """A real ``dramatiq actors`` process group on the run's services.

    Parameters:
      env: the run's services.
      processes, threads: Dramatiq worker sizing.
      queues: only these queues (default: all).
      faults: BALLAST_FAULTS for this worker (see infra/faults.py).
      modules: extra modules to load after ``actors`` (test-only or bench actors).
      extra_env: more environment variables (e.g. BALLAST_RETRY_MAX_RETRIES="2").
    """

    def __init__(self, env: TestEnv, *, processes: int = 1, threads: int = 2,
                 queues: list[str] | None = None, faults: str = "",
                 modules: list[str] | tuple[str, ...] = (), **extra_env: str) -> None:
        self.env = env
        self.args = [sys.executable, "-m", "infra.worker", "actors", *modules,
                     "--processes", str(processes), "--threads", str(threads)]
        if queues:
            self.args += ["--queues", *queues]
        self.watch_queue = queues[0] if queues else "ballast.wallets"
        # Each Worker's faults fire once for it (across its restarts), not once per run.
        fault_dir = tempfile.mkdtemp(prefix="worker-", dir=env.fault_dir)
        self.extra_env = {"BALLAST_FAULTS": faults, "BALLAST_FAULT_DIR": fault_dir, **extra_env}
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(env.fault_dir) / f"worker-{uuid.uuid4().hex[:6]}.log"

    def start(self, wait: bool = True) -> "Worker":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.args, cwd=ROOT, env=self.env.environ(**self.extra_env),
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 40.0) -> None:
        from infra import rabbit

        def consuming():
            if self.proc and self.proc.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.log()[-3000:]}")
            return all(r["consumers"] > 0 for r in rabbit.queue_stats(self.env.broker_url)
                       if r["queue"] == self.watch_queue)
        wait_until(consuming, timeout, what="worker to consume")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_dead(self, timeout: float = 30.0) -> None:
        wait_until(lambda: not self.alive, timeout, what="worker to die")
        self._reap()

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crashed pod would die."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
            self._reap()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self._reap()
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            self.kill()
        self._reap()

    def restart(self, **extra_env: str) -> "Worker":
        self.stop()
        self.extra_env.update(extra_env)
        return self.start()

    def _reap(self) -> None:
        # SIGKILL of a group leaves nothing behind, but make sure no orphan keeps consuming.
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> "Worker":
        # An already started worker (e.g. from bench.common.start_worker) is not started twice:
        # the first process would be orphaned, still consuming.
        return self if self.alive else self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def uid(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"
