"""Declaring Ballast actors: validation, unit of work and idempotency in one decorator.

    @command()
    def deposit(cmd: Deposit, uow: UnitOfWork) -> None:
        ...

The decorated function receives the validated command and an open unit of
work whose ``(actor, request_id)`` claim already succeeded; the decorator
commits when it returns.  With ``transactional=False`` it receives only the
command and opens its own units of work (long steps, external calls).
"""

from __future__ import annotations

from typing import Any, Callable

import dramatiq

from domain.errors import BallastError
from infra.broker import get_broker
from infra.contract import parse, spec_for
from infra.logs import get_logger
from infra.middleware import metrics
from infra.uow import UnitOfWork

log = get_logger(__name__)


def command(*, transactional: bool = True, **options: Any) -> Callable:
    """Register a function as the Dramatiq actor of the same name in CONTRACT.md.

    Parameters:
      transactional: wrap the call in a claimed UnitOfWork (default) or not.
      options: extra Dramatiq actor options (``max_retries``, ``time_limit``...).
    """

    def decorator(fn: Callable) -> dramatiq.Actor:
        spec = spec_for(fn.__name__)

        def run(**kwargs: Any) -> None:
            cmd = parse(spec.schema, kwargs)
            if not transactional:
                fn(cmd)
                return
            with UnitOfWork(actor=spec.actor, request_id=cmd.request_id, payload=cmd) as uow:
                if not uow.claim():
                    log.info("request.duplicate", detail="already applied; nothing done")
                    _count_duplicate(spec.queue, spec.actor)
                    return
                fn(cmd, uow)
                uow.commit()

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        run.__wrapped__ = fn  # type: ignore[attr-defined]
        # ``throws``: Dramatiq logs a permanent error as expected, without a traceback.
        options.setdefault("throws", (BallastError,))
        return dramatiq.actor(
            run, actor_name=spec.actor, queue_name=spec.queue, broker=get_broker(), **options
        )

    return decorator


def _count_duplicate(queue: str, actor: str) -> None:
    if metrics.DUPLICATES is not None:
        metrics.DUPLICATES.labels(queue=queue, actor=actor).inc()
