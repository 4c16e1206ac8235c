"""The unit of work: idempotency claims, and an outbox that only commits with the effect."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import text

from domain.errors import RequestConflict
from infra import rabbit
from infra.broker import build_broker, get_broker
from infra.contract.wallets import Deposit
from infra.uow import UnitOfWork
from tests.harness import EventTap, uid, wait_until


def deposit(rid: str, amount: int = 100) -> Deposit:
    return Deposit(request_id=rid, user_id="u1", currency="NGN", amount=amount, reference="ref")


def claim(engine, actor, rid, payload, commit=True) -> bool:
    with UnitOfWork(actor=actor, request_id=rid, payload=payload, engine=engine) as uow:
        claimed = uow.claim()
        if commit:
            uow.commit()
        return claimed


def outbox_rows(engine, marker: str) -> list:
    with engine.connect() as conn:
        return conn.execute(text("SELECT kind, published_at FROM outbox WHERE body::text LIKE :m"),
                            {"m": f"%{marker}%"}).all()


def ready(env, queue: str) -> int:
    return {r["queue"]: r["ready"] for r in rabbit.queue_stats(env.broker_url)}[queue]


def test_a_request_is_claimed_once_and_a_duplicate_is_told_so(engine):
    rid = uid("r")
    assert claim(engine, "deposit", rid, deposit(rid)) is True
    assert claim(engine, "deposit", rid, deposit(rid)) is False
    assert claim(engine, "withdraw", rid, deposit(rid)) is True  # the scope is (actor, request_id)


def test_a_request_id_reused_with_another_payload_is_refused(engine):
    rid = uid("r")
    assert claim(engine, "deposit", rid, deposit(rid, 100))
    with pytest.raises(RequestConflict, match="different payload"):
        claim(engine, "deposit", rid, deposit(rid, 101))


def test_a_rolled_back_claim_does_not_count(engine):
    rid = uid("r")
    assert claim(engine, "deposit", rid, deposit(rid), commit=False) is True
    assert claim(engine, "deposit", rid, deposit(rid)) is True


def test_concurrent_claims_of_one_request_succeed_once(engine):
    rid = uid("r")
    results: list[bool] = []
    start = threading.Barrier(6)

    def work():
        start.wait()
        with UnitOfWork(actor="deposit", request_id=rid, payload=deposit(rid), engine=engine) as uow:
            got = uow.claim()
            time.sleep(0.2)  # hold the claim while the others wait on it
            uow.commit()
        results.append(got)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [False] * 5 + [True]


def test_rollback_leaves_no_outbox_rows_and_publishes_nothing(env, engine, clean_queues):
    marker = uid("m")
    tap = EventTap(env)
    try:
        with pytest.raises(RuntimeError):
            with UnitOfWork(actor="deposit", request_id=marker, payload={}, engine=engine) as uow:
                uow.claim()
                uow.send("deposit", request_id=marker, user_id="u", currency="NGN", amount=1,
                         reference=marker)
                uow.emit("wallet.changed", {"marker": marker})
                raise RuntimeError("the effect failed")
        with UnitOfWork(engine=engine) as uow:  # left without commit()
            uow.emit("wallet.changed", {"marker": marker})
        time.sleep(0.5)
        assert outbox_rows(engine, marker) == []
        assert not [e for e in tap.drain() if e["data"].get("marker") == marker]
        assert ready(env, "ballast.wallets") == 0
    finally:
        tap.close()


def test_commit_publishes_the_outbox_and_marks_it(env, engine, clean_queues):
    marker = uid("m")
    tap = EventTap(env, "wallet.changed")
    try:
        with UnitOfWork(actor="deposit", request_id=marker, payload={}, engine=engine) as uow:
            uow.send("deposit", request_id=marker, user_id="u", currency="NGN", amount=1,
                     reference=marker)
            uow.emit("wallet.changed", {"marker": marker}, recipient="u")
            uow.commit()
        got = wait_until(lambda: [e for e in tap.drain() if e["data"].get("marker") == marker])
        assert len(got) == 1 and got[0]["recipient"] == "u"
        assert ready(env, "ballast.wallets") == 1
        rows = outbox_rows(engine, marker)
        assert len(rows) == 2 and all(r.published_at is not None for r in rows)
    finally:
        tap.close()


def test_a_failed_publish_after_commit_keeps_the_row_for_the_sweeper(engine):
    marker = uid("m")
    down = build_broker("amqp://guest:guest@127.0.0.1:1/%2F")  # nothing listens there
    with UnitOfWork(engine=engine, broker=down) as uow:
        uow.emit("wallet.changed", {"marker": marker})
        uow.commit()  # the effect is committed; the publish failure is not raised
    assert [r.published_at for r in outbox_rows(engine, marker)] == [None]
    assert get_broker() is not down


def test_each_entry_of_a_unit_of_work_is_a_new_transaction(env, engine, clean_queues):
    """A step entering the same unit of work again (a call to the outside world between two
    transactions) carries nothing over: the first entry's rolled-back rows are neither kept
    nor published by the second's commit, and its repositories are on the new connection."""
    first, second = uid("m"), uid("m")
    tap = EventTap(env, "wallet.changed")
    try:
        uow = UnitOfWork(engine=engine)
        with uow:
            uow.emit("wallet.changed", {"marker": first})
            conn = uow.conn
        with uow:
            assert uow.conn is not conn and uow.journal.conn is uow.conn
            assert uow.committed is False
            uow.emit("wallet.changed", {"marker": second})
            uow.commit()
        wait_until(lambda: [e for e in tap.drain() if e["data"].get("marker") == second])
        assert outbox_rows(engine, first) == []
        assert [r.published_at is not None for r in outbox_rows(engine, second)] == [True]
        assert not [e for e in tap.drain() if e["data"].get("marker") == first]
    finally:
        tap.close()


def test_a_held_lock_is_not_had_by_another_until_released(engine):
    key = int(uid("")[:7], 16)  # a key of this run's only
    one, other = UnitOfWork(engine=engine), UnitOfWork(engine=engine)
    with one.hold_lock(7, key) as got:
        assert got is True
        with other.hold_lock(7, key) as again:
            assert again is False
    with other.hold_lock(7, key) as again:
        assert again is True
