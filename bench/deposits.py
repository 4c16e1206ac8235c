"""Deposit messages per second through a real worker, against a no-op actor.

One worker process (``THREADS`` threads) loads Ballast's actors and ``bench.noop``; the
no-op rate (``bench.common.noop_rate``) and the deposit rate are measured on the same
broker, worker and run.  A deposit is counted when its ``(deposit, request_id)`` claim
is committed, i.e. when its effect is in the database.
"""

from __future__ import annotations

import statistics
import time
import uuid

from bench.common import bench_env, db_count, drain_rate, noop_rate, publish, result, start_worker

N = 2000  # deposits per round
ROUNDS = 3
USERS = 500
THREADS = 8


def deposit_rate(env, worker, n: int) -> float:
    tag = f"bench-{uuid.uuid4().hex[:8]}-"
    kwargs = [dict(request_id=f"{tag}{i}", user_id=f"bench{i % USERS}", currency="NGN",
                   amount=100 + i % 997, reference=f"bench {i}") for i in range(n)]
    started = time.monotonic()
    publish(env, "deposit", kwargs)
    count = lambda: db_count(  # noqa: E731
        env, "SELECT count(*) FROM processed_requests WHERE actor = 'deposit' "
             "AND request_id LIKE :tag", tag=f"{tag}%")
    return drain_rate(count, n, started, interval=0.05)


def run() -> dict:
    with bench_env() as env, start_worker(env, threads=THREADS) as worker:
        baseline = noop_rate(env, 5000, worker)
        deposit_rate(env, worker, USERS)  # warm-up; creates the wallets
        rates = [deposit_rate(env, worker, N) for _ in range(ROUNDS)]
        value = statistics.median(rates)
    return result(
        "deposits",
        value,
        "messages/s",
        baseline,
        f"deposit (validate, claim, ledger.post, wallet.changed via outbox) vs no-op actor; "
        f"1 worker process x {THREADS} threads; median of {ROUNDS} x {N} deposits over {USERS} "
        f"users, all against world:NGN",
    )
