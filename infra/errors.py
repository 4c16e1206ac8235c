"""Which failures are worth a retry, and for how long: the one place that says so.

Every failure of a step is one of three kinds:

- **permanent** — ``domain.errors.BallastError`` (invalid, refused, unauthorized…): never
  retried; dead-lettered at once with its reason and a ``command.rejected`` event.
- **transient** — a later attempt can get past it: the database or the broker went away,
  a deadlock or serialization failure, a lock or a provider that is busy, a race lost to
  a concurrent insert (a unique violation).  Retried with backoff while
  ``retries < max_retries`` and within the time budget (the actor's ``retry_within_ms``,
  else ``BALLAST_RETRY_MAX_TOTAL_MS``).  Infra modules declare their own transient errors
  by subclassing ``Transient`` here, never by a list of their own.
- **unexpected** — anything else: a bug, a check or foreign-key violation, a type error.
  It cannot pass by waiting, so it is retried only ``BALLAST_RETRY_UNEXPECTED_MAX_RETRIES``
  times (2 by default: a cosmic-ray guard, not a strategy), then dead-lettered with its
  traceback and an ``unexpected_error`` alert.

``verdict`` is the rule; the retry middleware (``infra/middleware/deadletters.py``) and
``infra/attempts.final_attempt`` (a step that must leave a visible state behind on its last
attempt) both ask it, so the two can never disagree.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Literal

import httpx
import pika.exceptions
import redis.exceptions
import sqlalchemy.exc
from dramatiq.errors import BrokerError
from dramatiq.middleware import TimeLimitExceeded

from domain.errors import BallastError

Kind = Literal["permanent", "transient", "unexpected"]


class Transient(Exception):
    """A failure a later attempt can get past; infra's own transient errors subclass it."""


#: Library failures that a later attempt can get past.
TRANSIENT = (
    Transient,
    sqlalchemy.exc.OperationalError,  # connection lost, deadlock, serialization failure
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,  # pool exhausted
    pika.exceptions.AMQPError,
    BrokerError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    httpx.TransportError,
    TimeLimitExceeded,
    ConnectionError,
    TimeoutError,
    socket.timeout,
)

#: SQLSTATE of an IntegrityError that a retry can get past: a concurrent insert won a race
#: (re-read and retry).  Check, not-null and foreign-key violations never pass.
RACE_SQLSTATES = frozenset({"23505"})  # unique_violation


def _sqlstate(exc: sqlalchemy.exc.DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)


def is_transient(exc: BaseException) -> str | None:
    """A short name of the transient cause, or None when ``exc`` is not transient."""
    if isinstance(exc, TRANSIENT):
        return type(exc).__name__
    if isinstance(exc, sqlalchemy.exc.IntegrityError) and _sqlstate(exc) in RACE_SQLSTATES:
        return "UniqueViolation"
    return None


def kind_of(exc: BaseException) -> Kind:
    if isinstance(exc, BallastError):
        return "permanent"
    return "transient" if is_transient(exc) else "unexpected"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and for how long a step is retried (settings, narrowed by actor options)."""

    max_retries: int  # transient failures
    budget_ms: int  # first failure to last retry
    unexpected_max_retries: int  # unexpected failures


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    retry: bool
    why: str  # why not, when ``retry`` is false ("" when it is retried)


def verdict(exc: BaseException, policy: RetryPolicy, *, retries: int, first_failure_ms: int,
            now_ms: int) -> Verdict:
    """Retry the failure ``exc`` of a message that has been retried ``retries`` times and
    first failed at ``first_failure_ms``?"""
    kind = kind_of(exc)
    if kind == "permanent":
        return Verdict(kind, False, "permanent")
    if now_ms - first_failure_ms >= policy.budget_ms:
        return Verdict(kind, False, "time budget spent")
    limit = policy.max_retries if kind == "transient" else min(policy.max_retries,
                                                               policy.unexpected_max_retries)
    if retries >= limit:
        label = "retries" if kind == "transient" else "retries of an unexpected error"
        return Verdict(kind, False, f"{retries} {label} exhausted")
    return Verdict(kind, True, "")


def policy_for(actor, settings) -> RetryPolicy:
    """The policy of ``actor`` (a Dramatiq actor or None) under ``settings``."""
    options = actor.options if actor is not None else {}
    budget = min(settings.retry_max_total_ms,
                 options.get("retry_within_ms", settings.retry_max_total_ms))
    return RetryPolicy(
        max_retries=options.get("max_retries", settings.retry_max_retries) if actor else 0,
        budget_ms=budget,
        unexpected_max_retries=settings.retry_unexpected_max_retries,
    )
