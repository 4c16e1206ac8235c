"""Ledger postings per second through ``infra.ledger.post`` against plain batched INSERTs.

Both sides write the same rows (one transaction of two entries per posting, between
``world:NGN`` and one of a hundred user accounts) into the benchmark's own database.
``infra.ledger.post`` runs as actors use it: one posting per database transaction, with
validation, account locks in id order and cached balances.  The baseline inserts the
same transactions and entries with multi-row INSERTs, ``BATCH`` postings per statement
and commit, and nothing else.
"""

from __future__ import annotations

import time

from sqlalchemy import text

from bench.common import bench_env, result
from domain.ledger import Posting

N = 3000  # postings per side
BATCH = 500  # postings per plain INSERT (and per commit)
USERS = 100


def postings(i: int) -> list[Posting]:
    amount = 100 + i % 997
    return [Posting("world:NGN", "NGN", -amount), Posting(f"user:bench{i % USERS}:NGN", "NGN", amount)]


def ledger_rate(engine, n: int, *, per_commit: int = 1) -> float:
    from infra import ledger

    started = time.monotonic()
    for start in range(0, n, per_commit):
        with engine.begin() as conn:
            for i in range(start, min(start + per_commit, n)):
                ledger.post(conn, postings(i), kind="bench", memo=f"bench {i}")
    return n / (time.monotonic() - started)


def plain_rate(engine, n: int) -> float:
    with engine.connect() as conn:
        ids = {r.code: r.id for r in conn.execute(text(
            "SELECT code, id FROM accounts WHERE code = 'world:NGN' OR code LIKE 'user:bench%'"))}
    started = time.monotonic()
    for start in range(0, n, BATCH):
        batch = range(start, min(start + BATCH, n))
        with engine.begin() as conn:
            txn_ids = conn.execute(
                text("INSERT INTO ledger_transactions (kind, memo) "
                     "SELECT 'plain', m FROM unnest(CAST(:memos AS text[])) AS m RETURNING id"),
                {"memos": [f"plain {i}" for i in batch]},
            ).scalars().all()
            rows = [(t, ids[p.account], p.currency, p.amount)
                    for t, i in zip(txn_ids, batch) for p in postings(i)]
            conn.execute(
                text("INSERT INTO ledger_entries (transaction_id, account_id, currency, amount) "
                     "SELECT * FROM unnest(CAST(:t AS bigint[]), CAST(:a AS bigint[]), "
                     "CAST(:c AS text[]), CAST(:m AS bigint[]))"),
                {"t": [r[0] for r in rows], "a": [r[1] for r in rows],
                 "c": [r[2] for r in rows], "m": [r[3] for r in rows]},
            )
    return n / (time.monotonic() - started)


def run() -> dict:
    from infra.db.engine import get_engine

    with bench_env() as env:
        engine = get_engine(env.database_url)
        ledger_rate(engine, USERS)  # warm-up; creates the user accounts
        value = ledger_rate(engine, N)
        batched = ledger_rate(engine, N, per_commit=BATCH)
        baseline = plain_rate(engine, N)
    return result(
        "ledger",
        value,
        "postings/s",
        baseline,
        f"infra.ledger.post, one posting per commit, vs plain multi-row INSERTs of the same rows "
        f"({BATCH} per commit); {N} postings each; ledger.post with {BATCH} per commit: "
        f"{batched:.0f}/s",
    )
