"""Sending a command the way ``ballast send`` does: validated against the contract, then
published (confirmed) to its queue.

The CLI's ``send`` and the console's actions both go through :func:`send_command`, so
whatever is added here (signing, say) applies to every command an operator sends.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import dramatiq

from domain.errors import InvalidCommand
from infra.contract import ACTORS, parse
from infra.logs import get_logger

log = get_logger(__name__)


class UnknownActor(InvalidCommand):
    """The actor is not in the contract."""


@dataclass(frozen=True)
class Sent:
    """A published command: its Dramatiq message id, queue and request id."""

    message_id: str
    queue: str
    request_id: str


def send_command(actor: str, kwargs: dict[str, Any], *, sender: str | None = None,
                 request_prefix: str = "cli") -> Sent:
    """Validate ``kwargs`` against ``actor``'s schema and publish the command.

    Parameters:
      actor: a contract actor name.
      kwargs: the message kwargs; a ``request_id`` is generated when missing.
      sender: who sends it (the console's logged-in operator; None for the CLI).  Logged with
        the message id; the acting kwarg (admin_id, performed_by…) is the caller's to set.
        The message's options stay empty: the workers' envelope check refuses unknown ones.
      request_prefix: prefix of a generated request id.

    Raises InvalidCommand (one line, as the CLI prints it) before anything is published.
    """
    spec = ACTORS.get(actor)
    if spec is None:
        raise UnknownActor(f"unknown actor {actor!r}; known: {', '.join(sorted(ACTORS))}")
    kwargs = dict(kwargs)
    kwargs.setdefault("request_id", f"{request_prefix}-{uuid.uuid4()}")
    parse(spec.schema, kwargs)
    from infra.broker import build_broker

    broker = build_broker()
    try:
        msg = broker.enqueue(dramatiq.Message(queue_name=spec.queue, actor_name=actor, args=(),
                                              kwargs=kwargs, options={}))
    finally:
        broker.close()
    log.info("command.sent", actor=actor, message_id=msg.message_id,
             request_id=kwargs["request_id"], sender=sender)
    return Sent(msg.message_id, spec.queue, kwargs["request_id"])
