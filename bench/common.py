"""What every benchmark needs: its own services, real workers, a yardstick, one JSON line.

A benchmark is a module ``bench/<name>.py`` with ``run() -> dict`` (or a list of them, one
per measured line); ``bench/run [NAME…]`` runs them (all by default) and prints one JSON
line each::

    {"bench", "value", "unit", "baseline", "ratio", "note"}

``ratio`` compares ``value`` with a ``baseline`` measured in the same run, stated so that
higher is better (``result`` computes it).  Never compare with numbers from another
machine or another run.

Helpers:

- ``bench_env()`` — context manager: a fresh database (``ballast_bench_<id>``, migrated),
  vhost and Redis db on the real services, made the process's settings; dropped after.
  Nothing here ever touches the default database named in CONTRACT.md.
- ``start_worker(env, modules=("bench.noop",), processes=1, threads=8, **extra_env)`` — a
  real ``dramatiq actors`` worker process (a ``tests.harness.Worker``, started and
  consuming); load your own extra actor modules through ``modules``.  Use it as a
  context manager (it is not started twice) or call ``.stop()``; ``bench_env`` stops
  whatever is still running when it exits, and ``bench/run`` unwinds on SIGTERM.
- ``publish(env, actor, kwargs_list, queue=None)`` — publish one Dramatiq message per
  kwargs dict, as fast as one AMQP channel allows; returns the seconds it took.
- ``drain_rate(count, n, started, timeout=...)`` — poll ``count()`` until it reaches ``n``;
  returns messages per second since ``started`` (a ``time.monotonic()`` value).
- ``noop_rate(env, n=5000, worker=None, rounds=3)`` — messages per second (median of
  ``rounds`` bursts) through a real worker for the no-op actor of ``bench/noop.py`` (queue
  ``bench.noop``, counted in Redis).  Pass the worker you measure your own actor with to
  compare like with like; without one, a worker is started for it and stopped after.
- ``db_count(env, sql, **params)`` — a ``count``-style scalar from the bench database,
  handy as ``count`` for ``drain_rate``.
- ``result(bench, value, unit, baseline, note)`` — the JSON line's dict.
"""

from __future__ import annotations

import importlib
import json
import logging
import signal
import statistics
import sys
import time
import traceback
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import dramatiq
import pika
import redis
from sqlalchemy import text

from tests import harness

BENCH_DIR = Path(__file__).resolve().parent
NOT_BENCHMARKS = {"__init__", "common", "noop"}


_workers: list[harness.Worker] = []


@contextmanager
def bench_env() -> Iterator[harness.TestEnv]:
    """A database, vhost and Redis db of the benchmark's own, active while inside.

    Every worker started with ``start_worker`` is stopped on the way out.
    """
    env = harness.create_env(prefix="ballast_bench")
    harness.activate(env)
    try:
        yield env
    finally:
        while _workers:
            _workers.pop().stop()
        harness.destroy_env(env)


def start_worker(env: harness.TestEnv, *, modules: Iterable[str] = ("bench.noop",),
                 processes: int = 1, threads: int = 8, **extra_env: str) -> harness.Worker:
    """A started worker process on every queue, with ``modules`` loaded after ``actors``."""
    extra_env.setdefault("BALLAST_LOG_LEVEL", "WARNING")  # logging is not what we measure
    worker = harness.Worker(env, processes=processes, threads=threads, modules=tuple(modules),
                            **extra_env)
    _workers.append(worker)
    return worker.start()


def publish(env: harness.TestEnv, actor: str, kwargs_list: Iterable[dict[str, Any]],
            queue: str | None = None) -> float:
    """Publish one message per kwargs to ``queue`` (default: the actor's contract queue).

    Persistent messages on one channel without publisher confirms: the benchmark
    counts what arrives, so a lost message shows up as a timeout, not a fast number.
    Returns the seconds spent publishing.
    """
    if queue is None:
        from infra.contract import spec_for

        queue = spec_for(actor).queue
    ring = harness.keyring(env)  # signed as the producer the policy wants, as upstream would
    bodies = [
        json.dumps(ring.sign(dramatiq.Message(queue_name=queue, actor_name=actor, args=(), kwargs=kw,
                                              options={})).asdict()).encode()
        for kw in kwargs_list
    ]
    _declare(env, queue)
    props = pika.BasicProperties(delivery_mode=2)
    conn = harness.amqp(env)
    try:
        ch = conn.channel()
        started = time.monotonic()
        for body in bodies:
            ch.basic_publish(exchange="", routing_key=queue, body=body, properties=props)
        conn.process_data_events(0)
        return time.monotonic() - started
    finally:
        conn.close()


def _declare(env: harness.TestEnv, queue: str) -> None:
    """Declare ``queue`` (with .DQ and .XQ) exactly as the workers do."""
    from infra.broker import build_broker

    broker = build_broker(env.broker_url)
    try:
        broker.declare_queue(queue, ensure=True)
    finally:
        broker.close()


def drain_rate(count: Callable[[], int], n: int, started: float, timeout: float = 300.0,
               interval: float = 0.02) -> float:
    """Messages per second from ``started`` until ``count()`` reaches ``n``."""
    deadline = started + timeout
    while True:
        done = count()
        now = time.monotonic()
        if done >= n:
            return n / (now - started)
        if now > deadline:
            raise TimeoutError(f"only {done} of {n} messages processed after {timeout:.0f}s")
        time.sleep(interval)


def noop_rate(env: harness.TestEnv, n: int = 5000, worker: harness.Worker | None = None,
              rounds: int = 3) -> float:
    """Messages per second through a real worker for the no-op actor (``bench/noop.py``).

    The median of ``rounds`` bursts of ``n`` messages, after a short warm-up.
    """
    from bench.noop import ACTOR, QUEUE

    own = worker is None
    if own:
        worker = start_worker(env)
    client = redis.Redis.from_url(env.redis_url)
    prefix = f"bench:noop:{uuid.uuid4().hex}"
    keys = [f"{prefix}:warm", *(f"{prefix}:{i}" for i in range(rounds))]
    try:
        rates = []
        for key, size in zip(keys, [50] + [n] * rounds):
            started = time.monotonic()
            publish(env, ACTOR, [{"counter": key}] * size, queue=QUEUE)
            rates.append(drain_rate(lambda: int(client.get(key) or 0), size, started))
        return statistics.median(rates[1:])
    finally:
        client.delete(*keys)
        client.close()
        if own:
            worker.stop()


def _cpu_s(pid: int) -> float:
    """utime + stime of one process, in seconds (0 if it is gone)."""
    import os

    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _tree(root: int) -> list[int]:
    """``root`` and its descendants (a Dramatiq worker forks its worker processes)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += parents.get(pid, [])
    return out


def cpu_snapshot(env: harness.TestEnv, worker: harness.Worker) -> dict[str, Any]:
    """CPU seconds so far of the worker's processes and of the PostgreSQL backends serving
    the bench database (read from /proc), for ``cpu_since``."""
    from infra.db.engine import database_name, get_engine

    with get_engine(env.database_url).connect() as conn:
        backends = [int(p) for p in conn.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = :d"),
            {"d": database_name(env.database_url)}).scalars()]
    pids = _tree(worker.proc.pid)
    return {"worker": {p: _cpu_s(p) for p in pids}, "db": {p: _cpu_s(p) for p in backends},
            "at": time.monotonic(), "env": env, "proc": worker}


def cpu_since(before: dict[str, Any]) -> dict[str, float]:
    """What the worker (Python) and the database backends spent since ``before``, and the
    wall time: measured, not estimated (a backend that ended meanwhile is not counted)."""
    now = cpu_snapshot(before["env"], before["proc"])
    worker_s = sum(max(0.0, t - before["worker"].get(p, 0.0)) for p, t in now["worker"].items())
    db_s = sum(max(0.0, t - before["db"].get(p, 0.0)) for p, t in now["db"].items())
    return {"worker_s": worker_s, "db_s": db_s, "wall_s": now["at"] - before["at"]}


def cpu_split(env: harness.TestEnv, worker: harness.Worker, run: Callable[[], Any]) -> dict[str, float]:
    """CPU seconds spent while ``run()`` runs by the worker's processes (Python) and by the
    PostgreSQL backends serving the bench database, and the wall time (``cpu_since``)."""
    before = cpu_snapshot(env, worker)
    run()
    return cpu_since(before)


def db_count(env: harness.TestEnv, sql: str, **params: Any) -> int:
    """One scalar from the bench database (e.g. ``SELECT count(*) FROM …``)."""
    from infra.db.engine import get_engine

    with get_engine(env.database_url).connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def result(bench: str, value: float, unit: str, baseline: float, note: str = "") -> dict[str, Any]:
    """The benchmark's line; ``value`` and ``baseline`` must both be higher-is-better."""
    return {
        "bench": bench,
        "value": round(value, 2),
        "unit": unit,
        "baseline": round(baseline, 2),
        "ratio": round(value / baseline, 4) if baseline else None,
        "note": note,
    }


def available() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if p.stem not in NOT_BENCHMARKS)


def main(argv: list[str]) -> int:
    """Run the named benchmarks (all by default); one JSON line each.  Exit 1 if any failed."""
    names = argv or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(available())}",
              file=sys.stderr)
        return 2
    from infra.logs import configure_logging

    configure_logging(level="WARNING")
    # ``timeout bench/run`` sends SIGTERM: unwind, so workers and databases are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.getLogger("pika").setLevel(logging.ERROR)  # passive declares of absent queues
    failed = 0
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        if not hasattr(module, "run"):
            continue
        try:
            lines = module.run()
        except Exception as exc:  # report it and go on with the others
            traceback.print_exc(file=sys.stderr)
            lines = {"bench": name, "value": None, "unit": None, "baseline": None, "ratio": None,
                     "note": f"failed: {type(exc).__name__}: {exc}"}
            failed += 1
        for line in lines if isinstance(lines, list) else [lines]:
            print(json.dumps(line), flush=True)
    return 1 if failed else 0
