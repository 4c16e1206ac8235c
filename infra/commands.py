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

from domain.auth import IDENTITY_FIELDS
from domain.errors import InvalidCommand
from infra.auth import Signer, operator_signer
from infra.broker import build_broker
from infra.contract import ACTORS, parse
from infra.logs import get_logger
from infra.settings import get_settings

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
                 request_prefix: str = "cli", signer: Signer | None = None) -> Sent:
    """Validate ``kwargs`` against ``actor``'s schema and publish the command.

    Parameters:
      actor: a contract actor name.
      kwargs: the message kwargs; a ``request_id`` is generated when missing.
      sender: who sends it (the console's logged-in operator; None for the CLI).  Logged with
        the message id; the acting kwarg (admin_id, performed_by…) is the caller's to set.
        The command is signed with the operator's key (BALLAST_OPERATOR_KEY / _FILE); an
        identity field left out is the operator's own name.
      request_prefix: prefix of a generated request id.
      signer: who signs (the console's operator); default the process's operator key.

    Raises InvalidCommand (one line, as the CLI prints it) before anything is published.
    """
    spec = ACTORS.get(actor)
    if spec is None:
        raise UnknownActor(f"unknown actor {actor!r}; known: {', '.join(sorted(ACTORS))}")
    kwargs = dict(kwargs)
    kwargs.setdefault("request_id", f"{request_prefix}-{uuid.uuid4()}")
    signer = signer or operator_signer()
    if signer is not None:
        # An identity the command names is the operator's own unless given.
        for field in IDENTITY_FIELDS:
            if field in spec.schema.model_fields:
                kwargs.setdefault(field, signer.producer)
    elif get_settings().auth == "require":
        raise InvalidCommand("no operator key to sign with: set BALLAST_OPERATOR_KEY or "
                             "BALLAST_OPERATOR_KEY_FILE")
    parse(spec.schema, kwargs)
    message = dramatiq.Message(queue_name=spec.queue, actor_name=actor, args=(), kwargs=kwargs,
                               options={})
    broker = build_broker()
    try:
        msg = broker.enqueue(signer.sign(message) if signer is not None else message)
    finally:
        broker.close()
    log.info("command.sent", actor=actor, message_id=msg.message_id,
             request_id=kwargs["request_id"], sender=sender)
    return Sent(msg.message_id, spec.queue, kwargs["request_id"])
