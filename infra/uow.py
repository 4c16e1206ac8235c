"""The unit of work: one database transaction, its idempotency claim and its outbox.

    with UnitOfWork(actor="deposit", request_id=cmd.request_id, payload=cmd) as uow:
        if not uow.claim():
            return                     # this request already took effect
        uow.ledger.post([...], kind="deposit")
        uow.emit("wallet.changed", {...})
        uow.commit()                   # then the outbox rows are published

Leaving the block without ``commit()`` rolls everything back, outbox rows
included, so nothing is published for a rolled-back transaction.  It is
``infra.transaction.Transaction`` (the transaction and its outbox) with the claim, the
process's broker and the repositories.

The repositories it owns are bound to its transaction: ``uow.conversions``,
``uow.buffers``, ``uow.providers`` (``infra/treasury/repository.py``),
``uow.journal`` (``infra/journal/repository.py``), ``uow.markets``
(``infra/markets/repository.py``), ``uow.challenges`` (``infra/challenges/repository.py``),
``uow.personas`` (``infra/challenges/personas.py``), ``uow.ledger`` and ``uow.alerts``
(``infra/repositories.py``), ``uow.wallets`` and ``uow.guard``
(``infra/wallets/repository.py``).  A step that calls the outside world between
transactions enters the same unit of work again: each ``with uow:`` is a new
transaction (``hold_lock`` holds an advisory lock across them).  The fake with the
same interface, for handler tests, is ``infra/uow_fake.py``.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import dramatiq
from dramatiq.middleware import CurrentMessage
from pydantic import BaseModel
from sqlalchemy import Engine, func, select

from domain.errors import RequestConflict
from infra import broker as process_broker
from infra.challenges.personas import PersonaRepository
from infra.challenges.repository import ChallengeRepository
from infra.db.engine import fetch
from infra.db.tables import processed_requests
from infra.journal.repository import JournalRepository
from infra.markets.repository import MarketRepository
from infra.repositories import AlertRepository, LedgerRepository
from infra.transaction import Transaction
from infra.treasury.repository import BufferRepository, ConversionRepository, ProviderRepository
from infra.wallets.repository import GuardRepository, WalletRepository

#: Every transactional command's first statement (the hot path: ``engine.fetch``).
_CLAIM = ("INSERT INTO processed_requests (actor, request_id, payload_hash, message_id) "
          "VALUES (:a, :r, :h, :m) ON CONFLICT DO NOTHING RETURNING 1")

_CLAIM_MANY = ("INSERT INTO processed_requests (actor, request_id, payload_hash, message_id) "
               "SELECT :a, x.r, x.h, x.m FROM json_to_recordset(CAST(:rows AS json)) "
               "AS x(r text, h text, m text) ON CONFLICT DO NOTHING RETURNING request_id")

#: How often ``hold_lock`` tries again while another process holds the lock.
LOCK_POLL_S = 0.1  # s


def payload_hash(payload: Any) -> str:
    if isinstance(payload, BaseModel):
        payload = payload.model_dump(mode="json")
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class UnitOfWork(Transaction):
    """Owns one transaction (``infra.transaction.Transaction``: its outbox, published after
    commit) and claims its request; rolls back unless ``commit()`` is called.

    Parameters:
      actor: the actor whose effect this is (idempotency scope).
      request_id: the command's idempotency key.
      payload: the validated command; a repeat must carry the same payload.
      engine: defaults to the process engine from settings.
      broker: where the outbox is published after commit (default: global broker).
    """

    def __init__(
        self,
        actor: str | None = None,
        request_id: str | None = None,
        payload: Any = None,
        *,
        engine: Engine | None = None,
        broker: dramatiq.Broker | None = None,
    ) -> None:
        super().__init__(broker, engine=engine, actor=actor)
        self.request_id = request_id
        self.payload = payload

    def __enter__(self) -> "UnitOfWork":
        super().__enter__()
        self.ledger = LedgerRepository(self.conn)
        self.alerts = AlertRepository(self)
        self.conversions = ConversionRepository(self.conn)
        self.buffers = BufferRepository(self.conn)
        self.providers = ProviderRepository(self.conn, self.engine)
        self.journal = JournalRepository(self.conn)
        self.personas = PersonaRepository(self.conn)
        self.guard = GuardRepository(self)
        self.wallets = WalletRepository(self, self.guard)
        self.markets = MarketRepository(self)
        self.challenges = ChallengeRepository(self.conn, self)
        return self

    def claim(self) -> bool:
        """Claim ``(actor, request_id)``.  False when it already took effect.

        Raises RequestConflict when the request id was used with another payload.
        A concurrent claim of the same key waits for the other transaction.
        """
        digest = payload_hash(self.payload)
        inserted = fetch(self.conn, _CLAIM, {"a": self.actor, "r": self.request_id,
                                             "h": digest, "m": _current_message_id()})
        if inserted:
            return True
        p = processed_requests.c
        earlier = self.conn.execute(
            select(p.payload_hash).where(p.actor == self.actor, p.request_id == self.request_id)
        ).scalar_one()
        if earlier != digest:
            raise RequestConflict(
                f"request_id {self.request_id!r} was already used for {self.actor} "
                "with a different payload"
            )
        return False

    def claim_many(self, requests: Sequence[tuple[str, Any, str | None]]) -> list[bool]:
        """Claim several requests of this actor at once (a group commit): ``(request_id,
        payload, message_id)`` each, in one statement.  For each in order: True when it is
        new, False when it already took effect (an earlier transaction's claim, or the same
        request earlier in ``requests``).  Raises RequestConflict as ``claim`` does."""
        digests = [payload_hash(payload) for _, payload, _ in requests]
        rows = json.dumps([{"r": r, "h": h, "m": m}
                           for (r, _, m), h in zip(requests, digests)])
        inserted = {row.request_id for row in fetch(self.conn, _CLAIM_MANY,
                                                    {"a": self.actor, "rows": rows})}
        fresh: list[bool] = []
        for (request_id, _, _), digest in zip(requests, digests):
            fresh.append(request_id in inserted)
            inserted.discard(request_id)  # a second copy in the group is a repeat
        repeats = {r for (r, _, _), new in zip(requests, fresh) if not new}
        if repeats:
            p = processed_requests.c
            earlier = dict(self.conn.execute(
                select(p.request_id, p.payload_hash)
                .where(p.actor == self.actor, p.request_id.in_(sorted(repeats)))).all())
            for (request_id, _, _), digest, new in zip(requests, digests, fresh):
                if not new and earlier[request_id] != digest:
                    raise RequestConflict(
                        f"request_id {request_id!r} was already used for {self.actor} "
                        "with a different payload")
        return fresh

    def broker(self) -> dramatiq.Broker:
        """The broker given, else the process's global one (``infra.broker.get_broker``)."""
        return self._broker or process_broker.get_broker()

    @contextmanager
    def hold_lock(self, namespace: int, key: int, wait_s: float = 0) -> Iterator[bool]:
        """Hold the advisory lock ``(namespace, key)`` across transactions (on an autocommit
        connection of its own).  Yields False when it could not be had within ``wait_s``;
        a process that dies drops its connection, and the lock with it."""
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            deadline = time.monotonic() + wait_s
            while True:
                got = conn.execute(select(func.pg_try_advisory_lock(namespace, key))).scalar_one()
                if got or time.monotonic() >= deadline:
                    break
                time.sleep(LOCK_POLL_S)
            try:
                yield bool(got)
            finally:
                if got:
                    conn.execute(select(func.pg_advisory_unlock(namespace, key)))
        finally:
            conn.close()


def _current_message_id() -> str | None:
    msg = CurrentMessage.get_current_message()
    return msg.message_id if msg is not None else None
