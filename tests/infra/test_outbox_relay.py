"""The worker's outbox relay: committed rows published once, in batches, and marked;
nothing for a rolled-back transaction; nothing lost when the broker is down."""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import text

from infra import outbox
from infra.broker import build_broker, get_broker
from infra.uow import UnitOfWork
from tests.harness import EventTap, amqp, uid, wait_until


def rows(engine, marker: str) -> list:
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT id, published_at, body FROM outbox WHERE body::text LIKE :m ORDER BY id"),
            {"m": f"%{marker}%"}).all()


def seen(tap: EventTap, marker: str) -> list[int]:
    return sorted(e["data"]["i"] for e in tap.drain() if e["data"].get("marker") == marker)


@pytest.fixture
def relay():
    broker = get_broker()
    started = outbox.start_relay(broker)
    yield started
    outbox.stop_relay(broker)


def test_rows_committed_by_many_threads_are_published_once_each_and_marked(env, engine, relay):
    marker, gone = uid("m"), uid("gone")
    tap = EventTap(env, "wallet.changed")
    gate = threading.Barrier(8)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            gate.wait()
            for j in range(25):
                i = k * 25 + j
                try:
                    with UnitOfWork(engine=engine) as uow:
                        uow.emit("wallet.changed", {"marker": marker if i % 5 else gone, "i": i})
                        if i % 5 == 0:
                            raise RuntimeError("rolled back")  # its row must never go out
                        uow.commit()
                except RuntimeError:
                    pass
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors
        assert relay.flush(60)
        committed = [i for i in range(200) if i % 5]
        got: list[int] = []
        wait_until(lambda: got.extend(seen(tap, marker)) or len(got) >= len(committed), timeout=60)
        assert sorted(got) == committed  # every committed row, none twice
        assert all(r.published_at is not None for r in rows(engine, marker))
        assert rows(engine, gone) == []
        assert not [e for e in tap.drain() if e["data"].get("marker") == gone]
        assert relay.batches < len(committed)  # rows went out in batches, not one by one
    finally:
        tap.close()


def test_next_step_messages_through_the_relay_reach_their_queue_signed(env, engine, relay,
                                                                       clean_queues):
    rid = uid("r")
    with UnitOfWork(engine=engine) as uow:
        uow.send("deposit", request_id=rid, user_id="u", currency="NGN", amount=5,
                 reference="relayed")
        uow.commit()
    assert relay.flush(30)
    assert rows(engine, rid)[0].published_at is not None
    conn = amqp(env)
    try:
        method, _, body = conn.channel().basic_get("ballast.wallets", auto_ack=True)
    finally:
        conn.close()
    message = json.loads(body)
    assert (message["actor_name"], message["kwargs"]["request_id"]) == ("deposit", rid)
    assert "ballast_auth" in message["options"]  # signed as Ballast when published


def test_a_relay_that_cannot_reach_the_broker_leaves_the_rows_to_the_sweeper(env, engine):
    marker = uid("m")
    down = build_broker("amqp://guest:guest@127.0.0.1:1/%2F")  # nothing listens there
    outbox.start_relay(down)
    tap = EventTap(env, "wallet.changed")
    try:
        with UnitOfWork(engine=engine, broker=down) as uow:
            uow.emit("wallet.changed", {"marker": marker, "i": 0})
            uow.commit()  # the effect is committed; the relay's failure is not raised
        assert outbox.relay_for(down).flush(30)
        assert [r.published_at for r in rows(engine, marker)] == [None]
        outbox.sweep(engine, get_broker(), grace_s=0)
        assert wait_until(lambda: seen(tap, marker) == [0])
        assert rows(engine, marker)[0].published_at is not None
    finally:
        outbox.stop_relay(down)
        tap.close()
