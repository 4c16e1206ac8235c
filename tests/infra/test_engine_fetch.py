"""The hot path's driver-cursor statements (``infra.db.engine.fetch``): what
``conn.execute(text(...))`` would do — the same transaction, the same rows, the same
errors, the same listeners — without SQLAlchemy's per-call result set-up."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from sqlalchemy import event, exc, text

from infra.db.engine import fetch


def test_rows_are_those_execute_returns_in_the_same_transaction(engine):
    with engine.connect() as conn, conn.begin():
        conn.execute(text("CREATE TEMP TABLE f (k text PRIMARY KEY, n bigint, pct text)"))
        rows = fetch(conn, "INSERT INTO f VALUES (:k, :n, '50%') RETURNING k, n, pct, "
                           "CAST(:n AS bigint) * 2 AS twice", {"k": "a", "n": 21})
        assert [(r.k, r.n, r.pct, r.twice) for r in rows] == [("a", 21, "50%", 42)]
        assert rows[0][1] == 21
        # The row is in the connection's transaction: execute sees it.
        assert conn.execute(text("SELECT n FROM f WHERE k = 'a'")).scalar_one() == 21
        assert fetch(conn, "SELECT k FROM f WHERE k = :k", {"k": "missing"}) == []


def test_a_rolled_back_transaction_keeps_nothing_fetch_wrote(engine):
    with engine.connect() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS fetch_probe (k text PRIMARY KEY)"))
        conn.commit()
        with conn.begin() as tx:
            fetch(conn, "INSERT INTO fetch_probe VALUES (:k) RETURNING k", {"k": "gone"})
            tx.rollback()
        assert conn.execute(text("SELECT count(*) FROM fetch_probe")).scalar_one() == 0
        conn.execute(text("DROP TABLE fetch_probe"))
        conn.commit()


def test_a_driver_error_is_raised_as_sqlalchemy_raises_it(engine):
    with engine.connect() as conn, conn.begin():
        conn.execute(text("CREATE TEMP TABLE g (k text PRIMARY KEY)"))
        fetch(conn, "INSERT INTO g VALUES (:k) RETURNING k", {"k": "x"})
        with pytest.raises(exc.IntegrityError) as raised:
            fetch(conn, "INSERT INTO g VALUES (:k) RETURNING k", {"k": "x"})
        assert "duplicate key" in str(raised.value.orig)
    with engine.connect() as conn, conn.begin():
        with pytest.raises(exc.DataError):
            fetch(conn, "SELECT CAST(:v AS int)", {"v": "not a number"})


def test_listeners_see_the_statement(engine):
    seen: list[str] = []

    def before(_conn, _cursor, statement, params, _context, _many):
        seen.append(statement)

    with engine.connect() as conn:
        event.listen(conn, "before_cursor_execute", before)
        try:
            fetch(conn, "SELECT CAST(:x AS int) AS x", {"x": 1})
        finally:
            event.remove(conn, "before_cursor_execute", before)
        conn.rollback()
    assert seen == ["SELECT CAST(%(x)s AS int) AS x"]


def test_a_lost_connection_is_invalidated_and_never_handed_out_again(engine):
    victim = engine.connect()
    pid = victim.execute(text("SELECT pg_backend_pid()")).scalar_one()
    victim.rollback()
    with engine.connect() as other:
        other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        other.commit()
    time.sleep(0.2)
    with pytest.raises(exc.DBAPIError) as raised:
        fetch(victim, "SELECT 1 AS one", {})
    assert raised.value.connection_invalidated
    assert victim.invalidated
    victim.close()
    with engine.connect() as conn:  # the pool connects anew
        assert fetch(conn, "SELECT pg_backend_pid() AS pid", {})[0].pid != pid
        conn.rollback()


def test_a_core_statement_runs_compiled_once_and_one_needing_conversion_is_refused(engine):
    t = sa.table("pg_database", sa.column("datname", sa.String))
    query = sa.select(t.c.datname).where(t.c.datname == sa.bindparam("d"))
    with engine.connect() as conn:
        name = conn.execute(sa.text("SELECT current_database()")).scalar_one()
        assert [r.datname for r in fetch(conn, query, {"d": name})] == [name]
        conn.rollback()
    flags = sa.table("f", sa.column("on", sa.Boolean))  # SQLAlchemy converts these values
    with pytest.raises(TypeError, match="converts"):
        fetch(None, sa.select(flags.c.on).where(flags.c.on == sa.bindparam("b")), {})


def test_a_core_statement_carries_its_own_literal_values(engine):
    t = sa.table("pg_database", sa.column("datname", sa.String))
    query = sa.select(sa.case((t.c.datname == sa.bindparam("d"), "mine"), else_="other")
                      .label("whose")).where(t.c.datname == sa.bindparam("d"))
    with engine.connect() as conn:
        name = conn.execute(sa.text("SELECT current_database()")).scalar_one()
        assert [r.whose for r in fetch(conn, query, {"d": name})] == ["mine"]
        conn.rollback()
