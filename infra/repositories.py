"""The ledger and the alerts as the unit of work hands them out
(``uow.ledger``, ``uow.alerts``): the same small interfaces
``infra/uow_fake.py`` implements in memory.

Each is a thin face over the module that does the work (``infra.ledger``,
``infra.alerts``), bound to the unit of work's transaction.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from domain.ledger import Posting, PostingBatchItem
from infra import alerts, ledger


class LedgerRepository:
    """Postings in the unit of work's transaction.

    Parameters:
      conn: the unit of work's open connection.
    """

    def __init__(self, conn) -> None:
        self.conn = conn

    def post(self, postings: Sequence[Posting], **options: Any) -> int:
        """One balanced transaction (``kind``, ``idempotency_key``, ``memo``, ``metadata``)."""
        return ledger.post(self.conn, list(postings), **options)

    def post_many(self, items: Sequence[PostingBatchItem]) -> list[int]:
        return ledger.post_many(self.conn, items)

    def lock_balances(self, codes: Iterable[str]) -> dict[str, int]:
        """Lock the accounts (in the ledger's order) and return their balances."""
        return {code: a.balance for code, a in ledger.lock_accounts(self.conn, codes).items()}

    def balances(self, codes: Iterable[str]) -> dict[str, int]:
        return ledger.balances(self.conn, codes)


class AlertRepository:
    """Alerts raised while true and resolved when clear, announced after commit.

    Parameters:
      unit: the unit of work (alerts write rows and events through it).
    """

    def __init__(self, unit) -> None:
        self.unit = unit

    def raise_(self, *, kind: str, severity: str, subject: str, dedupe_key: str,
               data: dict[str, Any] | None = None) -> int | None:
        """Open one alert; its id, or None when one was open for the key already."""
        return alerts.raise_alert(self.unit, kind=kind, severity=severity, subject=subject,
                                  dedupe_key=dedupe_key, data=data)

    def resolve(self, dedupe_key: str, note: str | None = None) -> bool:
        return alerts.resolve_alert(self.unit, dedupe_key, note)

    def resolve_all_except(self, prefix: str, still_true: Iterable[str]) -> int:
        return alerts.resolve_all_except(self.unit, prefix, still_true)

    def acknowledge(self, alert_id: int, by: str) -> dict[str, Any]:
        """An open alert acknowledged (it stays until cleared); the alert.  Refused unless open."""
        return alerts.acknowledge(self.unit.conn, alert_id, by)

    def resolve_by_hand(self, alert_id: int, by: str, note: str) -> dict[str, Any]:
        """An alert resolved by an operator, ``alert.resolved`` announced; the alert."""
        return alerts.resolve_by_hand(self.unit, alert_id, by, note)

    def announce_resolved(self, rows: Sequence[Any], note: str | None = None,
                          also: Sequence[tuple[str, dict[str, Any], str | None]] = ()) -> None:
        """The events of alerts a merged statement resolved, and the caller's ``also``."""
        alerts.announce_resolved(self.unit, rows, note, also)

    def announce_raised(self, items: Sequence[alerts.Alert], new: dict[str, int]) -> None:
        """The events of alerts a merged statement newly opened (``new``: key -> id)."""
        alerts.announce_raised(self.unit, items, new)
