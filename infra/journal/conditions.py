"""The ``unmatched_payments`` alert: donations left unmatched for more than a day."""

from __future__ import annotations

from sqlalchemy import text

from infra.alerts import Alert, reconcile
from infra.journal.repository import CANDIDATE_PARAMS, CANDIDATE_PAYMENTS
from infra.uow import UnitOfWork

UNMATCHED_AFTER_S = 86_400  # s: a payment unmatched this long since it was paid is an alert
DEDUPE_KEY = "journal:unmatched_payments"
LISTED = 50  # journal ids named in the alert's data


def unmatched_payments(uow: UnitOfWork) -> None:
    """One open alert while any donation to a LOGISTICS character, paid more than a day
    ago, is still not linked (ambiguous ones included: they wait for review)."""
    stale = uow.conn.execute(
        text(
            "SELECT count(*) AS n, COALESCE(sum(e.amount), 0) AS total, min(e.date) AS oldest, "
            "(array_agg(e.journal_id ORDER BY e.date, e.journal_id))[1:CAST(:listed AS int)] AS ids "
            + CANDIDATE_PAYMENTS
            + " AND e.date < now() - make_interval(secs => :after)"
        ),
        {"after": UNMATCHED_AFTER_S, "listed": LISTED, **CANDIDATE_PARAMS},
    ).one()
    reconcile(uow, DEDUPE_KEY, [
        Alert("unmatched_payments", "warning",
              f"{stale.n} payment(s) unmatched for more than a day", DEDUPE_KEY,
              {"count": int(stale.n), "amount": int(stale.total), "currency": "ISK",
               "oldest": stale.oldest.isoformat(), "journal_ids": list(stale.ids)})
    ] if stale.n else [])
