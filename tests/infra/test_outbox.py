"""The outbox sweeper: what a crash left unpublished goes out once, and is marked."""

from __future__ import annotations

import json
import threading
import time

from sqlalchemy import text

from infra import outbox
from infra.broker import build_broker, get_broker
from tests.harness import EventTap, amqp, uid, wait_until


def leave_unpublished(engine, marker: str, n: int = 1) -> None:
    """Commit outbox rows without publishing them: what a crash after commit leaves."""
    with engine.begin() as conn:
        for i in range(n):
            outbox.add_event(conn, "wallet.changed", {"marker": marker, "i": i})


def rows(engine, marker: str) -> list:
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT id, published_at, attempts, last_error FROM outbox WHERE body::text LIKE :m "
            "ORDER BY id"), {"m": f"%{marker}%"}).all()


def seen(tap: EventTap, marker: str) -> list[int]:
    return sorted(e["data"]["i"] for e in tap.drain() if e["data"].get("marker") == marker)


def test_sweep_publishes_rows_left_behind_exactly_once_and_marks_them(env, engine):
    marker = uid("m")
    leave_unpublished(engine, marker, 3)
    tap = EventTap(env, "wallet.changed")
    try:
        assert outbox.sweep(engine, get_broker(), grace_s=0) >= 3
        assert wait_until(lambda: seen(tap, marker) == [0, 1, 2])
        assert all(r.published_at is not None and r.attempts == 1 for r in rows(engine, marker))
        outbox.sweep(engine, get_broker(), grace_s=0)
        time.sleep(0.5)  # time enough for a second copy to arrive
        assert seen(tap, marker) == [0, 1, 2]  # nothing twice
    finally:
        tap.close()


def test_sweep_leaves_rows_younger_than_the_grace_to_their_worker(env, engine):
    marker = uid("m")
    leave_unpublished(engine, marker)
    outbox.sweep(engine, get_broker(), grace_s=3600)
    assert [r.published_at for r in rows(engine, marker)] == [None]
    outbox.sweep(engine, get_broker(), grace_s=0)
    assert rows(engine, marker)[0].published_at is not None


def test_swept_next_step_messages_reach_their_queue(env, engine, clean_queues):
    rid = uid("r")
    with engine.begin() as conn:
        outbox.add_message(conn, "deposit", {"request_id": rid, "user_id": "u", "currency": "NGN",
                                             "amount": 5, "reference": "swept"})
    outbox.sweep(engine, get_broker(), grace_s=0)
    conn = amqp(env)
    try:
        method, _, body = conn.channel().basic_get("ballast.wallets", auto_ack=True)
    finally:
        conn.close()
    assert method is not None
    message = json.loads(body)
    assert (message["actor_name"], message["kwargs"]["request_id"]) == ("deposit", rid)


def test_concurrent_sweeps_publish_each_row_once(env, engine):
    marker = uid("m")
    leave_unpublished(engine, marker, 200)
    tap = EventTap(env, "wallet.changed")
    try:
        threads = [threading.Thread(target=outbox.sweep, args=(engine, get_broker()),
                                    kwargs={"grace_s": 0, "limit": 20}) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        wait_until(lambda: len(seen(tap, marker)) >= 200)
        assert seen(tap, marker) == list(range(200))
        assert all(r.published_at is not None for r in rows(engine, marker))
    finally:
        tap.close()


def test_a_failed_sweep_keeps_the_row_with_its_error_for_the_next_one(env, engine):
    marker = uid("m")
    leave_unpublished(engine, marker)
    down = build_broker("amqp://guest:guest@127.0.0.1:1/%2F")
    assert outbox.sweep(engine, down, grace_s=0) == 0
    row = rows(engine, marker)[0]
    assert row.published_at is None and row.attempts >= 1 and row.last_error
    outbox.sweep(engine, get_broker(), grace_s=0)
    assert rows(engine, marker)[0].published_at is not None


def test_a_connection_the_broker_dropped_is_replaced_and_the_sweep_still_publishes(env, engine):
    import socket

    marker = uid("m")
    broker = build_broker(env.broker_url)
    broker.channel  # an open connection, as a long-lived sweeper has
    # What a broker that gave up on missed heartbeats leaves: a socket reset under us.
    broker.connection._impl._transport._sock.shutdown(socket.SHUT_RDWR)
    leave_unpublished(engine, marker, 2)
    tap = EventTap(env, "wallet.changed")
    try:
        assert outbox.sweep(engine, broker, grace_s=0) >= 2
        assert wait_until(lambda: seen(tap, marker) == [0, 1])
    finally:
        tap.close()
