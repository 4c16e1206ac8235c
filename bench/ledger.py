"""Ledger postings per second against the physical cost of committing the same rows.

Every posting is one ledger transaction of two entries, between ``world:NGN`` and one of a
hundred user accounts, in the benchmark's own database.  Three lines, each against a
baseline that writes the same ``ledger_transactions`` and ``ledger_entries`` rows with
nothing else (no account lookup, no lock, no check, no cached balance):

- ``ledger``: ``infra.ledger.post``, one posting per commit, one thread; baseline: the same
  rows committed one transaction at a time (one INSERT statement per transaction).
- ``ledger_threads``: the same with ``THREADS`` threads on both sides (every posting hits
  ``world:NGN``, the hot account).
- ``ledger_batch``: ``infra.ledger.post_many``, ``BATCH`` postings per call and commit;
  baseline: plain multi-row INSERTs of the same rows, ``BATCH`` per commit.

Both sides of a line run the same number of postings, with the same thread layout,
interleaved over ``ROUNDS`` rounds (median), so a noisy machine moves both alike.  The
notes say where the remaining time goes: statements and commits per posting, the client's
CPU time (Python) and the rest (waiting on the database), measured single-threaded.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Callable

from sqlalchemy import event, text

from bench.common import bench_env, result
from domain.ledger import Posting, PostingBatchItem

N_SINGLE = 1500  # postings per round, one thread
N_THREADS = 3000  # postings per round, THREADS threads
N_BATCH = 5000  # postings per round in batches
BATCH = 500  # postings per commit in the batch line
THREADS = 8
ROUNDS = 3
USERS = 100

PLAIN_ONE = text(
    "WITH t AS (INSERT INTO ledger_transactions (kind, memo) VALUES ('plain', :memo) "
    "RETURNING id) "
    "INSERT INTO ledger_entries (transaction_id, account_id, currency, amount) "
    "SELECT t.id, e.a, 'NGN', e.m FROM t, (VALUES (CAST(:wa AS bigint), CAST(:wm AS bigint)), "
    "(CAST(:ua AS bigint), CAST(:um AS bigint))) AS e(a, m)"
)
PLAIN_TXNS = text(
    "INSERT INTO ledger_transactions (kind, memo) "
    "SELECT 'plain', m FROM unnest(CAST(:memos AS text[])) WITH ORDINALITY AS u(m, o) "
    "ORDER BY o RETURNING id"
)
PLAIN_ENTRIES = text(
    "INSERT INTO ledger_entries (transaction_id, account_id, currency, amount) "
    "SELECT * FROM unnest(CAST(:t AS bigint[]), CAST(:a AS bigint[]), "
    "CAST(:c AS text[]), CAST(:m AS bigint[]))"
)


def postings(i: int) -> list[Posting]:
    amount = 100 + i % 997
    return [Posting("world:NGN", "NGN", -amount),
            Posting(f"user:bench{i % USERS}:NGN", "NGN", amount)]


def ledger_one(conn, i: int) -> None:
    from infra import ledger

    ledger.post(conn, postings(i), kind="bench", memo=f"bench {i}")


def plain_one(ids: dict[str, int]) -> Callable:
    def write(conn, i: int) -> None:
        world, user = postings(i)
        conn.execute(PLAIN_ONE, {"memo": f"plain {i}", "wa": ids[world.account],
                                 "wm": world.amount, "ua": ids[user.account], "um": user.amount})
    return write


def ledger_batch(conn, batch: range) -> None:
    from infra import ledger

    ledger.post_many(conn, [PostingBatchItem(postings(i), "bench", memo=f"bench {i}")
                            for i in batch])


def plain_batch(ids: dict[str, int]) -> Callable:
    def write(conn, batch: range) -> None:
        txn_ids = conn.execute(PLAIN_TXNS, {"memos": [f"plain {i}" for i in batch]}).scalars().all()
        rows = [(t, ids[p.account], p.currency, p.amount)
                for t, i in zip(txn_ids, batch) for p in postings(i)]
        conn.execute(PLAIN_ENTRIES, {"t": [r[0] for r in rows], "a": [r[1] for r in rows],
                                     "c": [r[2] for r in rows], "m": [r[3] for r in rows]})
    return write


def rate_one_per_commit(engine, write: Callable, n: int, threads: int) -> float:
    """Postings/s: ``write(conn, i)`` for i in range(n), one commit each, over ``threads``."""
    errors: list[BaseException] = []
    gate = threading.Barrier(threads + 1)

    def work(k: int) -> None:
        try:
            gate.wait()
            for i in range(k, n, threads):
                with engine.begin() as conn:
                    write(conn, i)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    gate.wait()
    started = time.monotonic()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]
    return n / (time.monotonic() - started)


def rate_batched(engine, write: Callable, n: int) -> float:
    started = time.monotonic()
    for start in range(0, n, BATCH):
        with engine.begin() as conn:
            write(conn, range(start, min(start + BATCH, n)))
    return n / (time.monotonic() - started)


def interleaved(ours: Callable[[], float], base: Callable[[], float]) -> tuple[float, float]:
    """Medians over ROUNDS rounds, the two sides taking turns."""
    a, b = [], []
    for _ in range(ROUNDS):
        a.append(ours())
        b.append(base())
    return statistics.median(a), statistics.median(b)


def profile(engine, run: Callable[[], None], n: int) -> dict[str, float]:
    """Single-threaded: statements, commits, client CPU (Python) and wall per posting."""
    counts = {"statements": 0, "commits": 0, "stmt_s": 0.0}
    started_at: list[float] = []

    def before(*_a):
        started_at.append(time.perf_counter())

    def after(*_a):
        counts["statements"] += 1
        counts["stmt_s"] += time.perf_counter() - started_at.pop()

    def on_commit(*_a):
        counts["commits"] += 1

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    event.listen(engine, "commit", on_commit)
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        run()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)
        event.remove(engine, "commit", on_commit)
    return {"statements": counts["statements"] / n, "commits": counts["commits"] / n,
            "wall_ms": 1000 * wall / n, "cpu_ms": 1000 * cpu / n,
            "stmt_ms": 1000 * counts["stmt_s"] / n}


def describe(p: dict[str, float]) -> str:
    return (f"{p['statements']:.3g} statement(s) + {p['commits']:.3g} commit(s) per posting, "
            f"{p['wall_ms']:.3f} ms wall of which {p['cpu_ms']:.3f} ms client CPU (Python) and "
            f"{p['stmt_ms']:.3f} ms inside statements (round trip + server)")


def run() -> list[dict]:
    from infra.db.engine import get_engine

    with bench_env() as env:
        engine = get_engine(env.database_url)
        for i in range(USERS):  # warm-up; creates the user accounts
            with engine.begin() as conn:
                ledger_one(conn, i)
        with engine.connect() as conn:
            ids = {r.code: r.id for r in conn.execute(text(
                "SELECT code, id FROM accounts WHERE code = 'world:NGN' "
                "OR code LIKE 'user:bench%'"))}
        plain, plain_many = plain_one(ids), plain_batch(ids)

        single = interleaved(lambda: rate_one_per_commit(engine, ledger_one, N_SINGLE, 1),
                             lambda: rate_one_per_commit(engine, plain, N_SINGLE, 1))
        threaded = interleaved(lambda: rate_one_per_commit(engine, ledger_one, N_THREADS, THREADS),
                               lambda: rate_one_per_commit(engine, plain, N_THREADS, THREADS))
        batched = interleaved(lambda: rate_batched(engine, ledger_batch, N_BATCH),
                              lambda: rate_batched(engine, plain_many, N_BATCH))

        n = 300
        p_ledger = profile(engine, lambda: rate_one_per_commit(engine, ledger_one, n, 1), n)
        p_plain = profile(engine, lambda: rate_one_per_commit(engine, plain, n, 1), n)
        p_batch = profile(engine, lambda: rate_batched(engine, ledger_batch, 2 * BATCH), 2 * BATCH)
        p_plain_batch = profile(engine, lambda: rate_batched(engine, plain_many, 2 * BATCH),
                                2 * BATCH)
    return [
        result("ledger", single[0], "postings/s", single[1],
               f"infra.ledger.post, one posting per commit, 1 thread, vs the same rows committed "
               f"one transaction at a time (no locks, no checks); median of {ROUNDS} x "
               f"{N_SINGLE}; ledger: {describe(p_ledger)}; baseline: {describe(p_plain)}"),
        result("ledger_threads", threaded[0], "postings/s", threaded[1],
               f"as ledger with {THREADS} threads on both sides, every posting on world:NGN; "
               f"median of {ROUNDS} x {N_THREADS}"),
        result("ledger_batch", batched[0], "postings/s", batched[1],
               f"infra.ledger.post_many, {BATCH} postings per call and commit, vs plain "
               f"multi-row INSERTs of the same rows ({BATCH} per commit); median of {ROUNDS} x "
               f"{N_BATCH}; post_many: {describe(p_batch)}; plain: {describe(p_plain_batch)}"),
    ]

