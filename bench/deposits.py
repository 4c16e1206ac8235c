"""Deposit messages per second through a real worker, against a no-op actor.

One worker process (``THREADS`` threads) loads Ballast's actors and ``bench.noop``; the
no-op rate (``bench.common.noop_rate``) and the deposit rate are measured on the same
broker, worker and run.  A deposit is counted when its ``(deposit, request_id)`` claim
is committed, i.e. when its effect is in the database.

The note says where the time goes, measured: how many deposits the worker committed per
transaction (group commit: claims of one transaction share its ``xmin``), the CPU the
worker process (Python) and the PostgreSQL backends spent per message during one round of
each (``bench.common.cpu_split``), and, in this process, single-threaded, the statements
and commits one deposit makes alone (its signature check included, the outbox relay's
marking shared out), its client CPU and its time inside statements.
"""

from __future__ import annotations

import statistics
import time
import uuid

from bench.common import (bench_env, cpu_split, db_count, drain_rate, noop_rate, publish, result,
                          start_worker)

N = 2000  # deposits per round
ROUNDS = 3
USERS = 500
THREADS = 8
PROFILED = 300  # deposits of the in-process profile


def _kwargs(tag: str, n: int) -> list[dict]:
    return [dict(request_id=f"{tag}{i}", user_id=f"bench{i % USERS}", currency="NGN",
                 amount=100 + i % 997, reference=f"bench {i}") for i in range(n)]


def deposit_rate(env, worker, n: int, tags: list[str] | None = None) -> float:
    tag = f"bench-{uuid.uuid4().hex[:8]}-"
    if tags is not None:
        tags.append(tag)
    started = time.monotonic()
    publish(env, "deposit", _kwargs(tag, n))
    count = lambda: db_count(  # noqa: E731
        env, "SELECT count(*) FROM processed_requests WHERE actor = 'deposit' "
             "AND request_id LIKE :tag", tag=f"{tag}%")
    return drain_rate(count, n, started, interval=0.05)


def profile(env, n: int) -> dict[str, float]:
    """One thread in this process: what a deposit costs, as a worker thread runs it
    (signature check, actor, commit; the outbox rows to this process's relay)."""
    import dramatiq
    from sqlalchemy import event

    import actors.wallets as wallets
    from infra import outbox
    from infra.broker import get_broker
    from infra.db.engine import get_engine
    from infra.middleware.auth import Authenticate
    from tests import harness

    broker = get_broker()
    relay = outbox.start_relay(broker)
    auth, ring, engine = Authenticate(), harness.keyring(env), get_engine(env.database_url)
    tag = f"prof-{uuid.uuid4().hex[:8]}-"
    messages = [ring.sign(dramatiq.Message(queue_name="ballast.wallets", actor_name="deposit",
                                           args=(), kwargs=kw, options={}))
                for kw in _kwargs(tag, n)]
    counts = {"statements": 0, "commits": 0, "stmt_s": 0.0}
    started_at: list[float] = []

    def before(*_a):
        started_at.append(time.perf_counter())

    def after(*_a):
        counts["statements"] += 1
        counts["stmt_s"] += time.perf_counter() - started_at.pop()

    def on_commit(*_a):
        counts["commits"] += 1

    for message in messages[:20]:  # warm-up (prepared statements, plans)
        auth.before_process_message(broker, message)
        wallets.deposit.fn(**message.kwargs)
    relay.flush()
    listeners = [("before_cursor_execute", before), ("after_cursor_execute", after),
                 ("commit", on_commit)]
    for name, fn in listeners:
        event.listen(engine, name, fn)
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        for message in messages[20:]:
            auth.before_process_message(broker, message)
            wallets.deposit.fn(**message.kwargs)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        relay.flush()
    finally:
        for name, fn in listeners:
            event.remove(engine, name, fn)
        outbox.stop_relay(broker)
    m = n - 20
    return {"statements": counts["statements"] / m, "commits": counts["commits"] / m,
            "wall_ms": 1000 * wall / m, "cpu_ms": 1000 * cpu / m,
            "stmt_ms": 1000 * counts["stmt_s"] / m}


def run() -> dict:
    with bench_env() as env, start_worker(env, threads=THREADS) as worker:
        baseline = noop_rate(env, 5000, worker)
        deposit_rate(env, worker, USERS)  # warm-up; creates the wallets
        tags: list[str] = []
        rates = [deposit_rate(env, worker, N, tags) for _ in range(ROUNDS)]
        # Claims committed in one transaction share its id (xmin): commits per deposit.
        commits = sum(db_count(env, "SELECT count(DISTINCT xmin::text) FROM processed_requests "
                                    "WHERE actor = 'deposit' AND request_id LIKE :tag",
                               tag=f"{t}%") for t in tags) / (ROUNDS * N)
        value = statistics.median(rates)
        dep = cpu_split(env, worker, lambda: deposit_rate(env, worker, N))
        noop = cpu_split(env, worker, lambda: noop_rate(env, N, worker, rounds=1))
        noop_n = N + 50  # noop_rate's warm-up burst
        prof = profile(env, PROFILED)
    per = lambda split, n, key: 1000 * split[key] / n  # noqa: E731  ms per message
    return result(
        "deposits",
        value,
        "messages/s",
        baseline,
        f"deposit (validate, verify signature, claim, guard, ledger.post, audit, alerts, "
        f"wallet.changed via outbox) vs no-op actor; 1 worker process x {THREADS} threads; "
        f"median of {ROUNDS} x {N} deposits over {USERS} users, all against world:NGN; "
        f"group commit: {commits:.3f} commits per deposit in the worker "
        f"({1 / commits:.1f} deposits per transaction on average). "
        f"CPU per message in one round (the machine's 2 cores are shared): deposit "
        f"{per(dep, N, 'worker_s'):.2f} ms in the worker (Python) + {per(dep, N, 'db_s'):.2f} ms "
        f"in PostgreSQL backends; no-op {per(noop, noop_n, 'worker_s'):.2f} ms + "
        f"{per(noop, noop_n, 'db_s'):.2f} ms (its signature check). In process, 1 thread "
        f"(no one to group with: each deposit alone): "
        f"{prof['statements']:.2f} statements + {prof['commits']:.2f} commits per deposit "
        f"(signature key lookup and the relay's batched marking included), "
        f"{prof['wall_ms']:.2f} ms wall, {prof['cpu_ms']:.2f} ms client CPU, "
        f"{prof['stmt_ms']:.2f} ms inside statements",
    )
