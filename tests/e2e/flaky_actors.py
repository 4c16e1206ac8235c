"""Test-only actors for the retry and dead-letter proofs.

Loaded into a real worker with ``Worker(env, modules=["tests.e2e.flaky_actors"])``.  Each
attempt is recorded (its time) in a Redis list named by the ``key`` argument.
"""

from __future__ import annotations

import time

import dramatiq
import redis
import sqlalchemy.exc

from domain.errors import BallastError, Refused
from infra.broker import get_broker
from infra.settings import get_settings

QUEUE = "ballast.test.flaky"


def attempt(key: str) -> int:
    """Record this attempt; returns its number (1 for the first)."""
    client = redis.Redis.from_url(get_settings().redis_url)
    try:
        return client.rpush(key, repr(time.time()))
    finally:
        client.close()


def database_gone() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError(
        "SELECT 1", {}, Exception("server closed the connection unexpectedly"))


@dramatiq.actor(queue_name=QUEUE, broker=get_broker())
def always_transient(key: str) -> None:
    attempt(key)
    raise database_gone()


@dramatiq.actor(queue_name=QUEUE, broker=get_broker())
def transient_once(key: str) -> None:
    if attempt(key) == 1:
        raise database_gone()


@dramatiq.actor(queue_name=QUEUE, broker=get_broker(), throws=(BallastError,))
def always_refused(key: str) -> None:
    attempt(key)
    raise Refused(f"{key} is refused for good")


@dramatiq.actor(queue_name=QUEUE, broker=get_broker())
def transient_while_broker_down(key: str) -> None:
    """Fails transiently, and the retry's enqueue fails too (once)."""
    attempt(key)
    broker = get_broker()

    def enqueue_fails_once(message, *, delay=None):
        del broker.enqueue  # back to the class's method
        raise dramatiq.errors.ConnectionClosed(Exception("broker went away"))

    broker.enqueue = enqueue_fails_once
    raise database_gone()


@dramatiq.actor(queue_name=QUEUE, broker=get_broker())
def always_unexpected(key: str) -> None:
    """A bug: neither permanent nor transient."""
    attempt(key)
    raise ValueError(f"{key}: a bug no retry gets past")


def _violation(sqlstate: str, what: str) -> sqlalchemy.exc.IntegrityError:
    class Orig(Exception):
        pass

    orig = Orig(what)
    orig.sqlstate = sqlstate
    return sqlalchemy.exc.IntegrityError("INSERT …", {}, orig)


@dramatiq.actor(queue_name=QUEUE, broker=get_broker())
def always_check_violation(key: str) -> None:
    """A check constraint refused the row: it never will accept it."""
    attempt(key)
    raise _violation("23514", 'new row violates check constraint "accounts_balance_check"')


@dramatiq.actor(queue_name=QUEUE, broker=get_broker())
def unique_race_once(key: str) -> None:
    """A concurrent insert won the race once: the retry re-reads and passes."""
    if attempt(key) == 1:
        raise _violation("23505", 'duplicate key value violates unique constraint "x_pkey"')


@dramatiq.actor(queue_name=QUEUE, broker=get_broker())
def explodes(key: str, blob: str = "") -> None:
    """Fails with an unexpected error (a bug): logged as an error with its traceback."""
    attempt(key)
    raise RuntimeError(f"{key} exploded")
