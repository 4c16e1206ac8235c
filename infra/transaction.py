"""One database transaction and its outbox, published after commit to a broker it is given.

The unit of work (``infra.uow.UnitOfWork``) is this plus the idempotency claim and the
process's broker.  The broker's own middleware (dead letters, thread watch, auth) write
their events and alerts through a bare ``Transaction`` on the broker their hook was
handed: the broker module imports them, so they cannot reach for the process broker
without an import cycle.

    with Transaction(broker) as tx:
        alerts.raise_alerts(tx, [...])
        tx.commit()                    # then the outbox rows are published to ``broker``

Leaving the block without ``commit()`` rolls everything back, outbox rows included.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from sqlalchemy import Connection, Engine

from infra import faults, outbox
from infra.db.engine import get_engine


class Transaction:
    """Owns one transaction; rolls back unless ``commit()`` is called.

    Parameters:
      broker: where the outbox is published after commit (a subclass may pick a default).
      engine: defaults to the process engine from settings.
      actor: whose effect this is (named to the fault points of ``infra.faults``).
    """

    def __init__(self, broker: dramatiq.Broker | None, *, engine: Engine | None = None,
                 actor: str | None = None) -> None:
        self.actor = actor
        self.engine = engine or get_engine()
        self._broker = broker
        self._rows: list[outbox.OutboxRow] = []
        self.conn: Connection
        self.committed = False

    def __enter__(self):
        # Each ``with`` is a new transaction (a step that calls the outside world between
        # transactions enters the same one again): nothing of the last one is carried over.
        self.conn = self.engine.connect()
        self._tx = self.conn.begin()
        self._rows = []
        self.committed = False
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            if not self.committed and self._tx.is_active:
                self._tx.rollback()
        finally:
            self.conn.close()

    def broker(self) -> dramatiq.Broker:
        """The broker the outbox rows go to after commit."""
        if self._broker is None:
            raise RuntimeError("a Transaction without a broker cannot publish its outbox")
        return self._broker

    def send(self, actor: str, **kwargs: Any) -> None:
        """Hand work to the next step: written now, published after commit."""
        self._rows.append(outbox.add_message(self.conn, actor, kwargs))

    def send_later(self, actor: str, delay_ms: int, **kwargs: Any) -> None:
        """Like ``send``, due ``delay_ms`` after commit (Dramatiq's delay queue)."""
        self._rows.append(outbox.add_message(self.conn, actor, kwargs, delay_ms=delay_ms))

    def emit(self, event: str, data: dict[str, Any], recipient: str | None = None) -> None:
        """Publish a domain event after commit (and keep it as a row)."""
        self._rows.append(outbox.add_event(self.conn, event, data, recipient))

    def emit_many(self, events: list[tuple[str, dict[str, Any], str | None]]) -> None:
        """Many events ``(name, data, recipient)`` in one statement; published after commit
        unless there are more than ``outbox.PUBLISH_INLINE_MAX`` (then ``outbox.sweep``
        does: a bulk step does not wait for thousands of publishes after its commit)."""
        rows = outbox.add_events(self.conn, events)
        if len(rows) <= outbox.PUBLISH_INLINE_MAX:
            self._rows.extend(rows)

    def emit_select(self, event: str, select_sql: str,
                    params: dict[str, Any] | None = None) -> int:
        """One event per row of ``select_sql`` (``recipient``, ``data`` jsonb), written by the
        database in one statement; published after commit under the same rule as
        ``emit_many``.  Returns how many."""
        count, rows = outbox.add_events_select(self.conn, event, select_sql, params or {},
                                               return_max=outbox.PUBLISH_INLINE_MAX)
        self._rows.extend(rows)
        return count

    def publish_after_commit(self, rows: list[outbox.OutboxRow]) -> None:
        """Outbox rows written by a caller's own statement (``outbox.events_statement``
        inside a bigger one): published after commit like ``emit``'s."""
        self._rows.extend(rows)

    def commit(self) -> None:
        self._tx.commit()
        self.committed = True
        faults.point("after_commit", self.actor)
        if self._rows:
            broker = self.broker()
            relay = outbox.relay_for(broker)
            if relay is not None:  # a worker: its relay publishes, in batches
                relay.submit(self.engine, self._rows)
            else:
                outbox.publish_rows(self.engine, broker, self._rows)
        faults.point("after_publish", self.actor)
