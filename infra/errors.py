"""Which failures are worth a retry.  Permanent errors are domain.errors.BallastError."""

from __future__ import annotations

import socket

import pika.exceptions
import redis.exceptions
import sqlalchemy.exc
from dramatiq.errors import BrokerError
from dramatiq.middleware import TimeLimitExceeded

#: Failures that a later attempt can get past.
TRANSIENT = (
    sqlalchemy.exc.OperationalError,  # connection lost, deadlock, serialization failure
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,  # pool exhausted
    sqlalchemy.exc.IntegrityError,  # a concurrent insert won a race; re-read and retry
    pika.exceptions.AMQPError,
    BrokerError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    TimeLimitExceeded,
    ConnectionError,
    TimeoutError,
    socket.timeout,
)


def is_transient(exc: BaseException) -> str | None:
    """A short name of the transient cause, or None for anything else."""
    if isinstance(exc, TRANSIENT):
        return type(exc).__name__
    try:
        import httpx

        if isinstance(exc, httpx.TransportError):
            return type(exc).__name__
    except ImportError:  # pragma: no cover
        pass
    return None
