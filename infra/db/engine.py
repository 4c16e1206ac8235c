"""One SQLAlchemy engine per process, built from BALLAST_DATABASE_URL."""

from __future__ import annotations

import functools
import os
import select
import threading

from typing import Any, Mapping

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import Connection, Engine, TextClause, create_engine, event, exc, text
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.sql import ClauseElement

from infra.settings import get_settings

_lock = threading.Lock()
_engines: dict[tuple[int, str], Engine] = {}


#: Pools (connections) of the primary's engine and of the read-only one.
POOL_SIZE, MAX_OVERFLOW = 10, 20
READ_POOL_SIZE, READ_MAX_OVERFLOW = 5, 10
POOL_RECYCLE_S = 1800  # s a pooled connection lives
CONNECT_TIMEOUT_S = 5  # s


def _pooled(key: str, url: str, pool_size: int, max_overflow: int, **connect_args) -> Engine:
    """The process's engine under ``key``, created on first use with Ballast's pool set-up.

    Engines are keyed by pid so a forked worker never reuses its parent's connections."""
    with _lock:
        engine = _engines.get((os.getpid(), key))
        if engine is None:
            engine = create_engine(
                url,
                pool_size=pool_size,
                max_overflow=max_overflow,
                # Liveness is checked at checkout without a round trip (``_alive``): a
                # pre-ping's SELECT 1 was one round trip per transaction on the hot path.
                pool_pre_ping=False,
                pool_recycle=POOL_RECYCLE_S,
                connect_args={"connect_timeout": CONNECT_TIMEOUT_S, **connect_args},
            )
            event.listen(engine, "checkout", _alive)
            _engines[(os.getpid(), key)] = engine
        return engine


def _alive(dbapi_connection, _record, _proxy) -> None:
    """A pooled connection is handed out only while its socket is quiet.

    An idle connection receives nothing from PostgreSQL unless the server closed it (a
    restart, ``pg_terminate_backend``, an idle timeout: an error message, then end of
    file), so a socket that is readable — or gone — at checkout means the connection is
    dead: the pool drops it and connects anew (``DisconnectionError``), as a pre-ping
    would, but without a round trip.  A connection lost silently (no packet at all) is
    not seen here, as it was not by a pre-ping's wait either; its first statement fails
    and the step is retried (``infra.errors``: transient)."""
    if dbapi_connection.closed:
        raise exc.DisconnectionError("the connection is closed")
    try:
        readable, _, _ = select.select([dbapi_connection.pgconn.socket], [], [], 0)
    except Exception as e:  # no socket any more
        raise exc.DisconnectionError(f"the connection has no socket: {e}") from e
    if readable:
        raise exc.DisconnectionError("the server closed the connection")


def get_engine(url: str | None = None) -> Engine:
    """The process's engine for ``url`` (default: settings)."""
    url = url or get_settings().database_url
    return _pooled(url, url, POOL_SIZE, MAX_OVERFLOW)


def autocommit(engine: Engine | None = None):
    """A connection for one read outside any transaction (a signature's key lookup): no
    ``BEGIN`` and no ``ROLLBACK`` round trips around its statement."""
    return (engine or get_engine()).connect().execution_options(isolation_level="AUTOCOMMIT")


def get_read_engine() -> Engine:
    """The engine of the read-only views (``BALLAST_READ_DATABASE_URL``, a replica): the
    primary's when it is unset.  Every session it opens is read-only
    (``default_transaction_read_only``), so nothing that writes or claims can run there by
    mistake; only views (CLI listings, the console's pages) use it."""
    s = get_settings()
    if not s.read_database_url or s.read_database_url == s.database_url:
        return get_engine()
    return _pooled("read:" + s.read_database_url, s.read_database_url, READ_POOL_SIZE,
                   READ_MAX_OVERFLOW, options="-c default_transaction_read_only=on")


@functools.lru_cache(maxsize=1024)
def sql(statement: str) -> TextClause:
    """``text(statement)``, built once per distinct statement: building a ``text()`` parses
    its ``:name`` parameters with a regular expression every time, which on the hot path
    (a deposit's statements) cost more client CPU than binding them."""
    return text(statement)


_DIALECT = psycopg_dialect.dialect()


@functools.lru_cache(maxsize=1024)
def _driver_sql(statement: str | ClauseElement) -> tuple[str, dict[str, Any]]:
    """``statement`` as SQLAlchemy sends it to psycopg (``:name`` -> ``%(name)s``, a literal
    ``%`` doubled), compiled once per distinct statement, with the values its Core
    expression carries itself (a literal in a ``CASE``).  A Core statement qualifies only
    when none of its parameters and columns needs SQLAlchemy to convert a value (its types
    are the driver's own: text, integers, booleans, timestamps, JSON)."""
    if isinstance(statement, str):
        return str(text(statement).compile(dialect=_DIALECT)), {}
    compiled = statement.compile(dialect=_DIALECT)
    types = [b.type for b in compiled.binds.values()]
    converted = [t for t in types if t._cached_bind_processor(_DIALECT) is not None]
    converted += [c[3] for c in compiled._result_columns
                  if c[3]._cached_result_processor(_DIALECT, None) is not None]
    if converted:
        raise TypeError(f"fetch cannot run a statement whose values SQLAlchemy converts: "
                        f"{sorted({type(t).__name__ for t in converted})}")
    query = str(compiled)
    own = {name: b.value for name, b in compiled.binds.items()
           if not b.required and b.callable is None and f"%({name})s" in query}
    return query, own


def fetch(conn: Connection, statement: str | ClauseElement, params: Mapping[str, Any]) -> list:
    """Run a hot-path ``statement`` (``text()`` syntax, or a Core statement with named
    ``bindparam``s) in ``conn``'s transaction on its driver cursor and return every row
    (named tuples: ``row.code``, ``row[0]``).

    What ``conn.execute(sql(statement), params)`` does, without SQLAlchemy's per-call
    work around the driver — the compiled-cache lookup, the parameter processing and,
    above all, the result's metadata (a ``Column`` per column per call, then merged by
    name): measured ~0.25 ms of client CPU per statement, a quarter of a deposit's.  The
    connection's ``before/after_cursor_execute`` listeners still see the statement (the
    statement-counting tests and benches), a driver error is raised as SQLAlchemy raises it
    (``sqlalchemy.exc.DBAPIError``'s subclass: ``infra.errors`` classifies those) and a
    lost connection is invalidated so the pool drops it.  For statements that return
    rows; parameters bound as given (``text()`` binds untyped values the same way)."""
    query, own = _driver_sql(statement)
    if own:
        params = {**own, **params}
    dbapi = conn.connection.dbapi_connection
    cursor = dbapi.cursor(row_factory=namedtuple_row)
    dispatch = conn.dispatch
    try:
        if dispatch.before_cursor_execute:
            dispatch.before_cursor_execute(conn, cursor, query, params, None, False)
        cursor.execute(query, params)
        rows = cursor.fetchall()
        if dispatch.after_cursor_execute:
            dispatch.after_cursor_execute(conn, cursor, query, params, None, False)
        return rows
    except psycopg.Error as e:
        lost = conn.dialect.is_disconnect(e, dbapi, cursor)
        if lost:
            conn.invalidate(e)
        raise exc.DBAPIError.instance(query, params, e, psycopg.Error,
                                      connection_invalidated=lost, dialect=conn.dialect) from e
    finally:
        cursor.close()


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def database_name(url: str | None = None) -> str:
    return make_url(url or get_settings().database_url).database or ""


def delete_in_batches(engine: Engine, statement: str, params: dict, batch: int) -> int:
    """Run a ``DELETE … LIMIT :batch`` statement, one transaction per batch, until a batch
    comes back short (short transactions: no long lock on a table workers write to).
    Returns how many rows went."""
    deleted = 0
    while True:
        with engine.begin() as conn:
            n = conn.execute(text(statement), {**params, "batch": batch}).rowcount
        deleted += n
        if n < batch:
            return deleted


def pg_array(values) -> str:
    """``values`` (str, int, bool or None each) as the text of a PostgreSQL array, to bind
    as one string parameter and ``CAST(:x AS text[])`` (or ``bigint[]``, ``boolean[]``,
    ``jsonb[]``...) in the statement: psycopg's list adaptation inspects and dumps every
    list on every call, which on the hot path (a posting's thirteen small arrays) cost
    more client CPU than the statement's own work.  Strings are always quoted (backslash
    and double quote escaped), so any text round-trips; None is NULL."""
    out = []
    for v in values:
        if v is None:
            out.append("NULL")
        elif v is True:
            out.append("t")
        elif v is False:
            out.append("f")
        elif isinstance(v, int):
            out.append(str(int(v)))
        else:
            out.append('"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(out) + "}"
