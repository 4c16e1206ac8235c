"""The ledger on PostgreSQL: lock order under concurrency, idempotency races, the check."""

from __future__ import annotations

import random
import threading
from collections import defaultdict

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from domain.errors import InsufficientFunds, LedgerError, NotFound
from domain.ledger import Posting
from infra import ledger
from infra.uow import UnitOfWork
from tests.harness import uid

THREADS = 8


def run_threads(work, n: int = THREADS) -> list[BaseException]:
    """Run ``work(i)`` in ``n`` threads started together; the exceptions they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def target(i):
        try:
            start.wait()
            work(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread hung (lock wait?)"
    return errors


def balances(engine, codes) -> dict[str, int]:
    with engine.connect() as conn:
        return ledger.balances(conn, codes)


def check(engine) -> dict:
    with engine.connect() as conn:
        return ledger.check(conn)


def test_concurrent_postings_on_overlapping_accounts_never_deadlock_and_conserve_money(engine):
    p = uid("c")
    codes = [f"world:{p}", f"user:{p}1:NGN", f"user:{p}2:NGN", f"treasury:{p}",
             f"escrow:challenge:{p}a", f"escrow:challenge:{p}b"]
    with UnitOfWork(engine=engine) as uow:  # some capital where it may not go negative
        ledger.post(uow.conn, [Posting(codes[0], "NGN", -3_000), Posting(codes[3], "NGN", 1_000),
                               Posting(codes[4], "NGN", 1_000), Posting(codes[5], "NGN", 1_000)],
                    kind="test")
        uow.commit()
    applied: dict[str, int] = defaultdict(int)
    refused = []
    lock = threading.Lock()

    def work(i):
        rnd = random.Random(i)
        for _ in range(40):
            legs = rnd.sample(codes, rnd.randint(2, len(codes)))
            amounts = [rnd.randint(1, 300) for _ in legs[1:]]
            postings = [Posting(legs[0], "NGN", -sum(amounts)),
                        *(Posting(c, "NGN", a) for c, a in zip(legs[1:], amounts))]
            rnd.shuffle(postings)  # the order of lines must not decide the lock order
            try:
                with UnitOfWork(engine=engine) as uow:
                    ledger.post(uow.conn, postings, kind="test")
                    uow.commit()
            except InsufficientFunds:
                with lock:
                    refused.append(postings)
                continue
            with lock:
                for posting in postings:
                    applied[posting.account] += posting.amount

    errors = run_threads(work)
    assert not errors, errors  # a deadlock would be an OperationalError here
    got = balances(engine, codes)
    assert sum(got.values()) == 0
    assert got == {c: applied[c] + {codes[0]: -3_000}.get(c, 1_000 if c in codes[3:] else 0)
                   for c in codes}
    assert all(got[c] >= 0 for c in codes[3:])
    assert check(engine)["ok"]


def test_concurrent_first_postings_open_each_account_once(engine):
    p = uid("n")
    fresh = [f"user:{p}{k}:USD" for k in range(4)]

    def work(i):
        targets = random.Random(i).sample(fresh, 3)
        for target in targets:
            with UnitOfWork(engine=engine) as uow:
                ledger.post(uow.conn, [Posting(f"world:{p}", "USD", -5), Posting(target, "USD", 5)],
                            kind="test")
                uow.commit()

    assert not run_threads(work)
    with engine.connect() as conn:
        opened = conn.execute(text("SELECT count(*) FROM accounts WHERE code LIKE :p"),
                              {"p": f"%{p}%"}).scalar_one()
    assert opened == len(fresh) + 1
    assert sum(balances(engine, fresh).values()) == THREADS * 3 * 5
    assert check(engine)["ok"]


def test_concurrent_repeats_of_one_idempotency_key_post_once(engine):
    p = uid("k")
    key = uid("key")
    postings = [Posting(f"world:{p}", "NGN", -70), Posting(f"user:{p}:NGN", "NGN", 70)]
    ids = []

    def work(i):
        while True:  # what the worker's retry does when a concurrent insert won the race
            try:
                with UnitOfWork(engine=engine) as uow:
                    ids.append(ledger.post(uow.conn, postings, kind="test", idempotency_key=key))
                    uow.commit()
                return
            except IntegrityError:
                continue

    assert not run_threads(work)
    assert len(set(ids)) == 1 and len(ids) == THREADS
    assert balances(engine, [f"user:{p}:NGN"]) == {f"user:{p}:NGN": 70}


def test_an_account_that_may_not_go_negative_can_reach_zero_but_not_below(engine):
    p = uid("z")
    treasury, world = f"treasury:{p}", f"world:{p}"
    with engine.begin() as conn:
        ledger.post(conn, [Posting(world, "NGN", -100), Posting(treasury, "NGN", 100)], kind="test")
        ledger.post(conn, [Posting(treasury, "NGN", -100), Posting(world, "NGN", 100)], kind="test")
        assert ledger.balance(conn, treasury).balance == 0
        with pytest.raises(InsufficientFunds, match="short by 1"):
            ledger.post(conn, [Posting(treasury, "NGN", -1), Posting(world, "NGN", 1)], kind="test")
    with engine.begin() as conn:
        with pytest.raises(InsufficientFunds):  # nor can a new one start below zero
            ledger.post(conn, [Posting(f"escrow:market:{p}", "NGN", -1), Posting(world, "NGN", 1)],
                        kind="test")
        assert ledger.balances(conn, [f"escrow:market:{p}"]) == {}


def test_a_reversal_points_to_its_original_and_is_posted_once(engine):
    p = uid("r")
    with engine.begin() as conn:
        txn = ledger.post(conn, [Posting(f"world:{p}", "TOKEN", -9), Posting(f"user:{p}:TOKEN", "TOKEN", 9)],
                          kind="test")
        rev = ledger.reverse(conn, txn)
        assert ledger.reverse(conn, txn) == rev
        assert conn.execute(text("SELECT reverses_id FROM ledger_transactions WHERE id = :i"),
                            {"i": rev}).scalar_one() == txn
        assert ledger.balance(conn, f"user:{p}:TOKEN").balance == 0
        with pytest.raises(LedgerError, match="itself a reversal"):
            ledger.reverse(conn, rev)


def test_unknown_accounts_and_transactions_are_not_found(engine):
    with engine.begin() as conn:
        with pytest.raises(NotFound):
            ledger.balance(conn, f"user:{uid()}:NGN")
        with pytest.raises(NotFound):
            ledger.reverse(conn, 10**12)


def test_entries_are_append_only(engine):
    p = uid("a")
    with engine.begin() as conn:
        txn = ledger.post(conn, [Posting(f"world:{p}", "NGN", -1), Posting(f"user:{p}:NGN", "NGN", 1)],
                          kind="test")
    for sql in ("UPDATE ledger_entries SET amount = 2 WHERE transaction_id = :t",
                "DELETE FROM ledger_entries WHERE transaction_id = :t"):
        with pytest.raises(Exception, match="append-only"):
            with engine.begin() as conn:
                conn.execute(text(sql), {"t": txn})


def test_check_reports_each_kind_of_broken_books(engine):
    """Break the books inside a transaction that is rolled back, and ask ``check``."""
    p = uid("b")
    with engine.connect() as conn:
        tx = conn.begin()
        try:
            txn = ledger.post(conn, [Posting(f"world:{p}", "NGN", -5), Posting(f"treasury:{p}", "NGN", 5)],
                              kind="test")
            assert ledger.check(conn)["ok"]
            acc = ledger.balance(conn, f"treasury:{p}")
            conn.execute(text("INSERT INTO ledger_entries (transaction_id, account_id, currency, amount) "
                              "VALUES (:t, :a, 'NGN', 3)"), {"t": txn, "a": acc.id})
            conn.execute(text("ALTER TABLE accounts DROP CONSTRAINT accounts_no_forbidden_negative"))
            conn.execute(text("UPDATE accounts SET balance = -1 WHERE id = :a"), {"a": acc.id})
            result = ledger.check(conn)
        finally:
            tx.rollback()
    assert not result["ok"]
    assert {"transaction_id": txn, "currency": "NGN", "sum": 3} in result["unbalanced"]
    assert {"account": f"treasury:{p}", "cached": -1, "entries": 8} in result["balance_mismatches"]
    assert {"account": f"treasury:{p}", "balance": -1} in result["negative_balances"]
    assert check(engine)["ok"]


def test_open_and_lock_opens_new_accounts_and_locks_those_with_a_limit_in_one_statement(engine):
    user, escrow = f"user:{uid()}:NGN", f"escrow:challenge:{uid()}"
    with engine.begin() as conn:  # the escrow exists (committed), the user's account not yet
        ledger.ensure_accounts(conn, {escrow: "NGN"})
    with engine.connect() as conn, conn.begin():
        got = ledger.open_and_lock_accounts(conn, {user: "NGN", escrow: "NGN",
                                                   "world:NGN": "NGN"})
        assert set(got) == {user, escrow, "world:NGN"}  # the new ones seen by the lock
        assert got[escrow].balance == 0 and not got[escrow].allow_negative
        assert got["world:NGN"].sharded
        with engine.connect() as other, other.begin():
            other.execute(text("SET LOCAL lock_timeout = '200ms'"))
            with pytest.raises(Exception, match="lock timeout"):  # the escrow row is locked
                other.execute(text("SELECT 1 FROM accounts WHERE code = :c FOR UPDATE"),
                              {"c": escrow})
            other.rollback()
        with engine.connect() as other, other.begin():
            other.execute(text("SET LOCAL lock_timeout = '200ms'"))
            # the unlimited account is never locked for update
            other.execute(text("SELECT 1 FROM accounts WHERE code = 'world:NGN' FOR UPDATE NOWAIT"))
            other.rollback()
