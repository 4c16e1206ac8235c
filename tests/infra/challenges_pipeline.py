"""Drive the challenge pipeline in this process, against the run's real PostgreSQL.

Commands run through the real actor code (validation, unit of work, claim);
the next steps the outbox hands on are collected instead of published to
RabbitMQ, then run in order, so a test sees the whole pipeline synchronously.
"""

from __future__ import annotations

import uuid
from collections import deque
from typing import Any
from unittest import mock

import dramatiq
from sqlalchemy import text

import actors.challenges as challenge_actors
import actors.wallets as wallet_actors
from infra import ledger


class Collector:
    """Stands in for the broker: keeps handed-on messages (events stay in the outbox table)."""

    def __init__(self) -> None:
        self.messages: deque[dramatiq.Message] = deque()

    def enqueue(self, message: dramatiq.Message, *, delay: int | None = None) -> dramatiq.Message:
        self.messages.append(message)
        return message


_COLLECTOR = Collector()  # one per process: the outbox caches a publisher per broker


def actor(name: str) -> dramatiq.Actor:
    return getattr(challenge_actors, name, None) or getattr(wallet_actors, name)


def run(name: str, *, drain: bool = True, **kwargs: Any) -> None:
    """Run one command now (and, with ``drain``, every step it hands on)."""
    kwargs.setdefault("request_id", f"t-{uuid.uuid4()}")
    with mock.patch("infra.broker.get_broker", return_value=_COLLECTOR):
        actor(name).fn(**kwargs)
        if drain:
            run_pending()


def run_pending(limit: int = 10_000) -> int:
    """Run the handed-on steps, in order, until none is left."""
    done = 0
    with mock.patch("infra.broker.get_broker", return_value=_COLLECTOR):
        while _COLLECTOR.messages and done < limit:
            msg = _COLLECTOR.messages.popleft()
            actor(msg.actor_name).fn(**msg.kwargs)
            done += 1
    return done


def pending() -> list[dramatiq.Message]:
    return list(_COLLECTOR.messages)


def clear_pending() -> None:
    _COLLECTOR.messages.clear()


def fund_user(user_id: str, amount: int, currency: str = "NGN") -> None:
    run("deposit", user_id=user_id, currency=currency, amount=amount, reference="test funds")


def fund_treasury(amount: int, currency: str = "NGN") -> None:
    run("fund_treasury", currency=currency, amount=amount, reference="test", performed_by="cfo")


def balance(engine, code: str) -> int:
    with engine.connect() as conn:
        return ledger.balances(conn, [code]).get(code, 0)


def events(engine, name: str, **match: Any) -> list[dict[str, Any]]:
    """Events written to the outbox (what upstream apps receive), oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT body FROM outbox WHERE event_name = :n ORDER BY id"),
                            {"n": name}).scalars().all()
    return [b for b in rows if all(b["data"].get(k) == v for k, v in match.items())]
