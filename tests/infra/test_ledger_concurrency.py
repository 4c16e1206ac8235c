"""The ledger's fast paths on PostgreSQL: sharded unlimited accounts, batches, concurrency.

An unlimited account (``world:``, ``adjustments:``) keeps its balance in shards: postings
on it never wait for each other, while accounts with a limit are still locked for each
posting.  ``post_many`` is all or none and checks each transaction after the ones before
it.  Under threads posting at once, the books stay sound (``ledger.check``) and equal to
what the threads say they posted.
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from domain.errors import InsufficientFunds, LedgerError
from domain.ledger import Posting, PostingBatchItem
from infra import ledger
from infra.uow import UnitOfWork
from tests.harness import uid
from tests.infra.test_ledger import THREADS, balances, check, run_threads


def counts(engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        return tuple(conn.execute(text(
            "SELECT (SELECT count(*) FROM ledger_transactions), "
            "(SELECT count(*) FROM ledger_entries), (SELECT count(*) FROM accounts)")).one())


def deposit(world: str, user: str, amount: int, cur: str = "NGN") -> list[Posting]:
    return [Posting(world, cur, -amount), Posting(user, cur, amount)]


def test_unlimited_accounts_are_sharded_and_accounts_with_a_limit_are_not(engine):
    p = uid("h")
    with engine.begin() as conn:
        ledger.post(conn, [Posting(f"world:{p}", "NGN", -10), Posting(f"adjustments:{p}", "NGN", 4),
                           Posting(f"user:{p}:NGN", "NGN", 3), Posting(f"treasury:{p}", "NGN", 3)],
                    kind="test")
        flags = dict(conn.execute(text("SELECT code, sharded FROM accounts WHERE code LIKE :p"),
                                  {"p": f"%{p}%"}).all())
        rows = dict(conn.execute(text("SELECT code, balance FROM accounts WHERE code LIKE :p"),
                                 {"p": f"%{p}%"}).all())
    assert flags == {f"world:{p}": True, f"adjustments:{p}": True, f"user:{p}:NGN": False,
                     f"treasury:{p}": False}
    # The rows of the sharded ones do not move; their balance is in the shards.
    assert rows[f"world:{p}"] == 0 and rows[f"adjustments:{p}"] == 0
    assert balances(engine, flags) == {f"world:{p}": -10, f"adjustments:{p}": 4,
                                       f"user:{p}:NGN": 3, f"treasury:{p}": 3}
    assert check(engine)["ok"]


def test_postings_on_one_unlimited_account_never_wait_for_each_other(engine):
    """THREADS transactions each post on world and stay open; none waits for another
    (a row lock would make the next one hit its lock_timeout, as no one commits)."""
    p = uid("w")
    world = f"world:{p}"
    with engine.begin() as conn:  # the account exists before the race
        ledger.post(conn, deposit(world, f"user:{p}x:NGN", 1), kind="test")
    conns = []
    try:
        for k in range(THREADS):
            conn = engine.connect()
            conns.append(conn)
            conn.begin()
            conn.execute(text("SET LOCAL lock_timeout = '500ms'"))
            ledger.post(conn, deposit(world, f"user:{p}{k}:NGN", 10 + k), kind="test")
            # wallets lock their accounts first; the unlimited one is read, not locked
            assert ledger.lock_accounts(conn, [world])[world].sharded
        for conn in conns:
            conn.commit()
    finally:
        for conn in conns:
            conn.close()
    assert balances(engine, [world]) == {world: -1 - sum(10 + k for k in range(THREADS))}
    assert check(engine)["ok"]


def test_an_account_with_a_limit_is_still_locked_by_each_posting(engine):
    p = uid("l")
    treasury, world = f"treasury:{p}", f"world:{p}"
    with engine.begin() as conn:
        ledger.post(conn, deposit(world, treasury, 100), kind="test")
    first, second = engine.connect(), engine.connect()
    try:
        first.begin()
        ledger.post(first, [Posting(treasury, "NGN", -60), Posting(world, "NGN", 60)], kind="test")
        second.begin()
        second.execute(text("SET LOCAL lock_timeout = '200ms'"))
        with pytest.raises(OperationalError, match="lock timeout"):
            ledger.post(second, [Posting(treasury, "NGN", -60), Posting(world, "NGN", 60)],
                        kind="test")
        second.rollback()
        first.commit()
    finally:
        first.close()
        second.close()
    assert balances(engine, [treasury]) == {treasury: 40}


def test_threads_depositing_through_one_hot_account_keep_the_books(engine):
    p = uid("d")
    world, adjustments = f"world:{p}", f"adjustments:{p}"
    applied: dict[str, int] = defaultdict(int)
    lock = threading.Lock()
    posted, checks = threading.Event(), []
    finished = []

    def work(i):
        if i == THREADS:  # the checker: the books are sound at every moment, not only after
            while not posted.is_set():
                checks.append(check(engine))
            return
        try:
            deposits(i)
        finally:
            with lock:
                finished.append(i)
                if len(finished) == THREADS:
                    posted.set()

    def deposits(i):
        rnd = random.Random(i)
        for n in range(30):
            user = f"user:{p}{rnd.randrange(5)}:NGN"
            amount = rnd.randint(1, 500)
            if n % 3 == 2:  # a batch: deposits and a correction against adjustments
                items = [PostingBatchItem(deposit(world, user, amount), "test"),
                         PostingBatchItem(deposit(adjustments, user, 7), "test")]
                with UnitOfWork(engine=engine) as uow:
                    ledger.post_many(uow.conn, items)
                    uow.commit()
                postings = [q for item in items for q in item.postings]
            else:
                postings = deposit(world, user, amount)
                with UnitOfWork(engine=engine) as uow:
                    ledger.post(uow.conn, postings, kind="test")
                    uow.commit()
            with lock:
                for q in postings:
                    applied[q.account] += q.amount

    assert not run_threads(work, THREADS + 1)
    assert checks and all(c["ok"] for c in checks), [c for c in checks if not c["ok"]][:1]
    assert balances(engine, applied) == dict(applied)
    with engine.connect() as conn:
        per_account = dict(conn.execute(text(
            "SELECT a.code, sum(s.balance) FROM account_shards s JOIN accounts a "
            "ON a.id = s.account_id WHERE a.code IN (:w, :a) GROUP BY a.code"),
            {"w": world, "a": adjustments}).all())
    assert per_account == {world: applied[world], adjustments: applied[adjustments]}
    assert check(engine)["ok"]


def test_threads_posting_batches_over_overlapping_accounts_never_deadlock(engine):
    p = uid("b")
    limited = [f"treasury:{p}", f"escrow:challenge:{p}a", f"escrow:challenge:{p}b",
               f"house:{p}"]
    world = f"world:{p}"
    with engine.begin() as conn:
        ledger.post(conn, [Posting(world, "NGN", -4_000), *(Posting(c, "NGN", 1_000) for c in limited)],
                    kind="test")
    applied: dict[str, int] = defaultdict(int)
    lock = threading.Lock()

    def work(i):
        rnd = random.Random(100 + i)
        for _ in range(20):
            items = []
            for _ in range(rnd.randint(1, 5)):
                src, dst = rnd.sample([world, *limited], 2)
                amount = rnd.randint(1, 200)
                legs = [Posting(src, "NGN", -amount), Posting(dst, "NGN", amount)]
                rnd.shuffle(legs)
                items.append(PostingBatchItem(legs, "test"))
            rnd.shuffle(items)  # the order of transactions must not decide the lock order
            try:
                with UnitOfWork(engine=engine) as uow:
                    ledger.post_many(uow.conn, items)
                    uow.commit()
            except InsufficientFunds:
                continue
            with lock:
                for item in items:
                    for q in item.postings:
                        applied[q.account] += q.amount

    errors = run_threads(work)
    assert not errors, errors  # a deadlock would be an OperationalError here
    got = balances(engine, [world, *limited])
    assert sum(got.values()) == 0
    assert got == {c: applied[c] + (-4_000 if c == world else 1_000) for c in [world, *limited]}
    assert all(got[c] >= 0 for c in limited)
    assert check(engine)["ok"]


def test_a_batch_is_all_or_none_and_checks_each_transaction_after_the_ones_before(engine):
    p = uid("n")
    treasury, world = f"treasury:{p}", f"world:{p}"
    items = [
        PostingBatchItem(deposit(world, f"user:{p}new:NGN", 5), "test"),  # would open an account
        PostingBatchItem([Posting(treasury, "NGN", -50), Posting(world, "NGN", 50)], "test"),
        PostingBatchItem(deposit(world, treasury, 100), "test"),  # too late for the one before
    ]
    before = counts(engine)
    with engine.begin() as conn:
        with pytest.raises(InsufficientFunds, match="transaction 1 of the batch: .*short by 50"):
            ledger.post_many(conn, items)
    assert counts(engine) == before  # not even the accounts it would have opened
    with engine.begin() as conn:  # in the other order every step is covered
        ids = ledger.post_many(conn, [items[0], items[2], items[1]])
    assert len(set(ids)) == 3 and ids == sorted(ids)
    assert balances(engine, [treasury, f"user:{p}new:NGN"]) == {treasury: 50, f"user:{p}new:NGN": 5}
    assert check(engine)["ok"]


def test_a_batch_repeating_a_used_key_gives_the_earlier_transaction(engine):
    p = uid("r")
    world, user = f"world:{p}", f"user:{p}:NGN"
    with engine.begin() as conn:
        first = ledger.post(conn, deposit(world, user, 9), kind="test", idempotency_key=f"{p}-1")
    with engine.begin() as conn:
        ids = ledger.post_many(conn, [
            PostingBatchItem(deposit(world, user, 9), "test", idempotency_key=f"{p}-1"),
            PostingBatchItem(deposit(world, user, 1), "test", idempotency_key=f"{p}-2"),
        ])
    assert ids[0] == first and ids[1] > first
    before = counts(engine)
    with engine.begin() as conn:
        with pytest.raises(LedgerError, match="reused with other postings"):
            ledger.post_many(conn, [PostingBatchItem(deposit(world, user, 2), "test"),
                                    PostingBatchItem(deposit(world, user, 8), "test",
                                                     idempotency_key=f"{p}-1")])
        with pytest.raises(LedgerError, match="twice in one batch"):
            ledger.post_many(conn, [PostingBatchItem(deposit(world, user, 2), "t", idempotency_key="x"),
                                    PostingBatchItem(deposit(world, user, 2), "t", idempotency_key="x")])
    assert counts(engine) == before
    assert balances(engine, [user]) == {user: 10}


def test_check_counts_the_shards_of_an_unlimited_account(engine):
    """A shard that drifts from the entries, or a shard on an account with a limit, breaks
    the books (inside a transaction that is rolled back)."""
    p = uid("c")
    with engine.connect() as conn:
        tx = conn.begin()
        try:
            ledger.post(conn, deposit(f"world:{p}", f"treasury:{p}", 5), kind="test")
            assert ledger.check(conn)["ok"]
            world, treasury = ledger.balance(conn, f"world:{p}"), ledger.balance(conn, f"treasury:{p}")
            conn.execute(text("UPDATE account_shards SET balance = balance + 1 "
                              "WHERE account_id = :a AND shard = 3"), {"a": world.id})
            conn.execute(text("INSERT INTO account_shards (account_id, shard) VALUES (:a, 0)"),
                         {"a": treasury.id})
            result = ledger.check(conn)
        finally:
            tx.rollback()
    assert not result["ok"]
    assert {"account": f"world:{p}", "cached": -4, "entries": -5} in result["balance_mismatches"]
    assert any(m["account"] == f"treasury:{p}" and "has a limit" in m.get("problem", "")
               for m in result["balance_mismatches"])
    assert check(engine)["ok"]
