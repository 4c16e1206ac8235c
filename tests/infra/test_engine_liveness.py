"""The pool's liveness check at checkout (``infra.db.engine._alive``): a connection the
server closed is never handed out, without a round trip to find out."""

from __future__ import annotations

import time

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from infra.db.engine import autocommit


def test_a_connection_the_server_closed_is_replaced_at_checkout(engine):
    a, b = engine.connect(), engine.connect()
    pid = a.execute(text("SELECT pg_backend_pid()")).scalar_one()
    a.close()  # idle in the pool
    b.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    b.close()
    time.sleep(0.2)  # the server's goodbye reaches the idle socket
    held = [engine.connect() for _ in range(3)]  # the dead one is among the pool's first
    try:  # no OperationalError: the dead connection was dropped and replaced
        pids = [c.execute(text("SELECT pg_backend_pid()")).scalar_one() for c in held]
    finally:
        for c in held:
            c.close()
    assert pid not in pids


def _query_start(engine, pid: int):
    """When the backend's last statement started, read on a connection of its own."""
    observer = create_engine(engine.url, poolclass=NullPool)
    try:
        with observer.connect() as conn:
            return conn.execute(text("SELECT query_start FROM pg_stat_activity WHERE pid = :p"),
                                {"p": pid}).scalar_one()
    finally:
        observer.dispose()


def test_a_checkout_costs_no_round_trip(engine):
    a, b = engine.connect(), engine.connect()
    pid = a.execute(text("SELECT pg_backend_pid()")).scalar_one()
    a.close()
    b.close()
    before = _query_start(engine, pid)
    held = [engine.connect() for _ in range(2)]  # a is checked out again, and returned
    for c in held:
        c.close()
    # A pre-ping (SELECT 1, with its BEGIN and ROLLBACK) would have moved the backend's
    # query_start: nothing reached it.
    assert _query_start(engine, pid) == before


def test_an_autocommit_read_opens_no_transaction(engine):
    with autocommit(engine) as conn:
        assert conn.execute(text("SELECT now() = statement_timestamp()")).scalar_one()
    # The pooled connection goes back to transactions for the next user.
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        assert conn.execute(text("SELECT now() = statement_timestamp()")).scalar_one() is False
