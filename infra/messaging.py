"""Declaring Ballast actors: validation, unit of work and idempotency in one decorator.

    @command()
    def deposit(cmd: Deposit, uow: UnitOfWork) -> None:
        ...

The decorated function receives the validated command and an open unit of
work whose ``(actor, request_id)`` claim already succeeded; the decorator
commits when it returns.  With ``transactional=False`` it receives only the
command and opens its own units of work (long steps, external calls); when it takes
a second argument, that is an unentered unit of work it enters once per transaction.

Every command's runner is kept by actor name (``RUNNERS``): ``infra.cli.in_process.call``
runs one in this process through the same path (validated, claimed, committed) and
returns the handler's result, so the CLI's levers never write state their own way.  An
in-process caller may give the handler keyword arguments beside the command (``extras``: a
progress callback, the operator name the CLI checked itself; never from a message, so never
through the broker), and work of its own to do in the handler's transaction before it
commits (``then``: the CLI's audit rows, committed with what they record or not at all).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import dramatiq
from dramatiq.middleware import CurrentMessage

from domain.errors import BallastError
from infra import faults
from infra.broker import get_broker
from infra.contract import parse, spec_for
from infra.group_commit import GroupCommit, Grouping
from infra.logs import get_logger
from infra.middleware import metrics
from infra.settings import get_settings
from infra.uow import UnitOfWork

log = get_logger(__name__)

#: Every registered command's runner by actor name (``infra.cli.in_process.call`` runs one).
RUNNERS: dict[str, Callable[..., Any]] = {}


def command(*, transactional: bool = True,
            grouped: Grouping | None = None,
            **options: Any) -> Callable:
    """Register a function as the Dramatiq actor of the same name in CONTRACT.md.

    Parameters:
      transactional: wrap the call in a claimed UnitOfWork (default) or not.
      grouped: the messages a worker's threads handle at once share one transaction
        (``infra.group_commit``: claimed together, handled set-wise by the ``Grouping``'s
        handler, one commit; all or nothing, else each runs alone).
      options: extra Dramatiq actor options (``max_retries``, ``time_limit``...).
    """

    def decorator(fn: Callable) -> dramatiq.Actor:
        spec = spec_for(fn.__name__)

        takes_uow = len(inspect.signature(fn).parameters) > 1

        def apply(cmd: Any, extras: dict[str, Any] | None = None,
                  then: Callable[[UnitOfWork, Any], None] | None = None) -> Any:
            extras = extras or {}
            if not transactional:
                if then is not None:
                    raise TypeError(f"{spec.actor} opens its own transactions: no `then`")
                if takes_uow:
                    return fn(cmd, UnitOfWork(actor=spec.actor, request_id=cmd.request_id,
                                              payload=cmd), **extras)
                return fn(cmd, **extras)
            with UnitOfWork(actor=spec.actor, request_id=cmd.request_id, payload=cmd) as uow:
                if not uow.claim():
                    log.info("request.duplicate", detail="already applied; nothing done")
                    _count_duplicate(spec.queue, spec.actor)
                    return None
                result = fn(cmd, uow, **extras)
                if then is not None:
                    then(uow, result)
                uow.commit()
            return result

        def invoke(kwargs: dict[str, Any], extras: dict[str, Any] | None = None,
                   then: Callable[[UnitOfWork, Any], None] | None = None) -> Any:
            return apply(parse(spec.schema, kwargs), extras, then)

        def apply_group(items: Sequence[tuple[Any, str | None]]) -> list[Any]:
            """Several commands in one transaction, one commit (``infra.group_commit``)."""
            handler = grouped.handler
            with UnitOfWork(actor=spec.actor) as uow:
                fresh = uow.claim_many([(cmd.request_id, cmd, mid) for cmd, mid in items])
                for (cmd, _), new in zip(items, fresh):
                    if not new:
                        log.info("request.duplicate", request_id=cmd.request_id,
                                 detail="already applied; nothing done")
                        _count_duplicate(spec.queue, spec.actor)
                new_cmds = [cmd for (cmd, _), new in zip(items, fresh) if new]
                done = iter(handler(uow, new_cmds) if new_cmds else [])
                results = [next(done) if new else None for new in fresh]
                uow.commit()
            faults.point("after_group_commit", spec.actor)
            return results

        group: GroupCommit | None = None
        if grouped is not None and transactional and get_settings().group_commit_max > 1:
            key, part = grouped.key, grouped.partition
            group = GroupCommit(apply_group, lambda item: apply(item[0]),
                                key=(lambda item: key(item[0])) if key else id,
                                partition=(lambda item: part(item[0])) if part else None,
                                max_size=get_settings().group_commit_max, name=spec.actor)

        def run(**kwargs: Any) -> None:  # a message's kwargs: the command, nothing else
            # Nothing is returned to Dramatiq: no message wants a result (there is no
            # results backend), and a value would cost a warning in the log per message.
            # In-process callers get the handler's result from ``RUNNERS``.
            message = CurrentMessage.get_current_message()
            if group is None or message is None:  # not in a worker: no one to group with
                invoke(kwargs)
            else:
                group.submit((parse(spec.schema, kwargs), message.message_id))

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        run.__wrapped__ = fn  # type: ignore[attr-defined]
        # ``throws``: Dramatiq logs a permanent error as expected, without a traceback.
        options.setdefault("throws", (BallastError,))
        RUNNERS[spec.actor] = invoke
        return dramatiq.actor(
            run, actor_name=spec.actor, queue_name=spec.queue, broker=get_broker(), **options
        )

    return decorator


def _count_duplicate(queue: str, actor: str) -> None:
    if metrics.DUPLICATES is not None:
        metrics.DUPLICATES.labels(queue=queue, actor=actor).inc()

