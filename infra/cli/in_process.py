"""The CLI's levers run a command in this process, by its actor name.

    created = in_process.call("run_settlement_cycle", request_id=..., trigger="manual")

``call`` runs the registered command through the path its actor takes (validated, claimed,
committed: ``infra.messaging.command``) and returns what the handler returns, so a lever
never writes state its own way.  The CLI may send by actor name (docs/STYLE.md): the
actors are registered by loading their package by name, as the worker does
(``python -m infra.worker actors``); nothing in ``infra`` imports ``actors``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from infra import messaging
from infra.broker import get_broker
from infra.uow import UnitOfWork

#: The package whose import registers every actor (the worker's argument too).
ACTORS_PACKAGE = "actors"


def register() -> None:
    """Register every actor here now, as the worker does (``call`` does it on first use)."""
    get_broker()  # this process's own broker first: the actors' package would build a worker's
    importlib.import_module(ACTORS_PACKAGE)


def call(actor_name: str, /, *, extras: dict[str, Any] | None = None,
         then: Callable[[UnitOfWork, Any], None] | None = None, **kwargs: Any) -> Any:
    """Run the command ``actor_name`` here and now, as its actor would (validated, claimed,
    committed), and return what its handler returns.

    Parameters:
      actor_name: the actor of CONTRACT.md.
      extras: keyword arguments for the handler beside the command (a progress callback,
        the operator name the CLI checked itself); never from a message.
      then: ``then(uow, result)`` runs in the handler's transaction before the commit (the
        CLI's audit rows; transactional commands only).
      kwargs: the command, as a message would carry it.

    A duplicate request runs neither the handler nor ``then``."""
    if actor_name not in messaging.RUNNERS:
        register()
    return messaging.RUNNERS[actor_name](kwargs, extras, then)
