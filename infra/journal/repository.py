"""Characters, cycles, participations, wallet-journal entries and payment links on PostgreSQL.

Every function takes the unit of work's open ``Connection``; nothing here commits.
Bulk work is set-based (``unnest`` arrays), so a batch of 5,000 entries or a run
linking 20,000 payments is a handful of statements, not one per row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Sequence

from sqlalchemy import Connection, Row, text

from domain.errors import NotFound, Refused
from domain.matching import (
    AWAITING,
    CYCLE,
    DONATION,
    EXPIRED,
    LOGISTICS,
    OPTED_IN,
    PARTICIPATION,
    expected_memo,
)

#: pg_advisory_xact_lock key held by every step that links payments or opens a cycle,
#: so two matching runs (or a run and an admin link) never decide on the same payment.
MATCHING_LOCK = 0x6A6F75726E616C  # "journal"

#: Payments that may pay for a participation: donations received by LOGISTICS characters.
CANDIDATE_PAYMENTS = f"""
    FROM journal_entries e
    JOIN journal_characters c ON c.character_id = e.character_id AND c.role = '{LOGISTICS}'
    WHERE e.ref_type = '{DONATION}' AND e.amount > 0
      AND NOT EXISTS (SELECT 1 FROM journal_payment_links l WHERE l.journal_id = e.journal_id)
"""


def lock_matching(conn: Connection) -> None:
    """Serialise with every other run, admin link and cycle opening (until commit)."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MATCHING_LOCK})


# --- characters and cycles ----------------------------------------------------------

def game_id(stored: str | None) -> int | str | None:
    """A character or party id as declared (an integer, CONTRACT.md), from its text column.

    The columns are text (older rows may hold other ids); the contract admits only
    integers now, written as their decimal text."""
    if isinstance(stored, str) and stored.isdigit():
        return int(stored)
    return stored


def register_character(conn: Connection, character_id: int, name: str, role: str) -> str:
    """Create or update a character; returns ``created``, ``updated`` or ``unchanged``."""
    row = conn.execute(
        text(
            "INSERT INTO journal_characters AS c (character_id, name, role) VALUES (:id, :n, :r) "
            "ON CONFLICT (character_id) DO UPDATE SET name = EXCLUDED.name, role = EXCLUDED.role, "
            "updated_at = now() WHERE (c.name, c.role) IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.role) "
            "RETURNING (xmax = 0) AS created"
        ),
        {"id": str(character_id), "n": name, "r": role},
    ).one_or_none()
    if row is None:
        return "unchanged"
    return "created" if row.created else "updated"


def plan_cycle(conn: Connection, cycle_id: str) -> bool:
    """Create a planned cycle; False when it already exists (whatever its status)."""
    return conn.execute(
        text("INSERT INTO journal_cycles (cycle_id) VALUES (:c) ON CONFLICT DO NOTHING RETURNING 1"),
        {"c": cycle_id},
    ).scalar_one_or_none() is not None


def cycle(conn: Connection, cycle_id: str, *, for_update: bool = False) -> Row:
    row = conn.execute(
        text("SELECT * FROM journal_cycles WHERE cycle_id = :c" + (" FOR UPDATE" if for_update else "")),
        {"c": cycle_id},
    ).one_or_none()
    if row is None:
        raise NotFound(f"cycle {cycle_id} does not exist")
    return row


def open_cycle(conn: Connection, cycle_id: str) -> dict[str, int]:
    """Expire the participations still awaiting payment (kept, out of the capital) and
    open the cycle with the capital its opted-in participations brought."""
    expired = conn.execute(
        text(
            "UPDATE journal_participations SET status = :expired, expired_at = now() "
            "WHERE cycle_id = :c AND status = ANY(:from)"
        ),
        {"c": cycle_id, "expired": EXPIRED, "from": list(PARTICIPATION.sources(EXPIRED))},
    ).rowcount
    capital = conn.execute(
        text(
            "SELECT count(*) AS n, COALESCE(sum(amount), 0) AS total FROM journal_participations "
            "WHERE cycle_id = :c AND status = :opted"
        ),
        {"c": cycle_id, "opted": OPTED_IN},
    ).one()
    moved = conn.execute(
        text(
            "UPDATE journal_cycles SET status = :s, opened_at = now(), initial_capital = :cap "
            "WHERE cycle_id = :c AND status = ANY(:from) RETURNING 1"
        ),
        {"c": cycle_id, "cap": int(capital.total), "s": "open", "from": list(CYCLE.sources("open"))},
    ).first()
    if moved is None:
        current = conn.execute(text("SELECT status FROM journal_cycles WHERE cycle_id = :c"),
                               {"c": cycle_id}).scalar_one_or_none()
        if current is None:
            raise NotFound(f"cycle {cycle_id} does not exist")
        CYCLE.check(current, "open")
    return {"participants": int(capital.n), "expired": expired, "initial_capital": int(capital.total)}


def close_cycle(conn: Connection, cycle_id: str, closing_capital: int, closed_by: str) -> None:
    """open → closed, with the capital its account holds now."""
    conn.execute(
        text("UPDATE journal_cycles SET status = :s, closed_at = now(), "
             "closing_capital = :cap, closed_by = :by WHERE cycle_id = :c AND status = ANY(:from)"),
        {"c": cycle_id, "cap": closing_capital, "by": closed_by, "s": "closed",
         "from": list(CYCLE.sources("closed"))},
    )


# --- participations -----------------------------------------------------------------

def create_participation(conn: Connection, participation_id: str, cycle_id: str, user_id: str,
                         character_name: str, pledged: int) -> bool:
    """Create a participation awaiting payment; False when the very same one exists.

    Refused when the id exists with other details.
    """
    memo = expected_memo(cycle_id, character_name)
    created = conn.execute(
        text(
            "INSERT INTO journal_participations "
            "(participation_id, cycle_id, user_id, character_name, memo, pledged) "
            "VALUES (:p, :c, :u, :n, :m, :amt) ON CONFLICT DO NOTHING RETURNING 1"
        ),
        {"p": participation_id, "c": cycle_id, "u": user_id, "n": character_name, "m": memo,
         "amt": pledged},
    ).scalar_one_or_none()
    if created:
        return True
    row = participation(conn, participation_id)
    if (row.cycle_id, row.user_id, row.character_name, row.pledged) != (
        cycle_id, user_id, character_name, pledged
    ):
        raise Refused(f"participation {participation_id} already exists with other details")
    return False


def participation(conn: Connection, participation_id: str, *, for_update: bool = False) -> Row:
    row = conn.execute(
        text(
            "SELECT p.*, c.status AS cycle_status FROM journal_participations p "
            "JOIN journal_cycles c USING (cycle_id) WHERE p.participation_id = :p"
            + (" FOR UPDATE OF p" if for_update else "")
        ),
        {"p": participation_id},
    ).one_or_none()
    if row is None:
        raise NotFound(f"participation {participation_id} does not exist")
    return row


def expecting(conn: Connection) -> list[Row]:
    """Participations that may take a payment: awaiting, or opted in and topping up,
    in a cycle not yet open."""
    return list(conn.execute(
        text(
            "SELECT p.participation_id, p.cycle_id, p.character_name, p.pledged "
            "FROM journal_participations p JOIN journal_cycles c USING (cycle_id) "
            "WHERE c.status = 'planned' AND p.status IN (:awaiting, :opted) "
            "ORDER BY p.participation_id"
        ),
        {"awaiting": AWAITING, "opted": OPTED_IN},
    ))


# --- the wallet journal -------------------------------------------------------------

def import_entries(conn: Connection, entries: Sequence[Any], request_id: str) -> int:
    """Insert a batch; an entry whose journal id is known is left as it was.

    Returns how many entries were new.
    """
    cols: dict[str, list[Any]] = {k: [] for k in (
        "ids", "chars", "dates", "types", "amounts", "reasons", "firsts", "seconds")}
    for e in entries:
        cols["ids"].append(e.journal_id)
        cols["chars"].append(str(e.character_id))
        cols["dates"].append(e.date)
        cols["types"].append(e.ref_type)
        cols["amounts"].append(e.amount)
        cols["reasons"].append(e.reason)
        cols["firsts"].append(str(e.first_party_id))
        cols["seconds"].append(str(e.second_party_id))
    return conn.execute(
        text(
            "INSERT INTO journal_entries (journal_id, character_id, date, ref_type, amount, reason, "
            "first_party_id, second_party_id, import_request_id) "
            "SELECT *, CAST(:rid AS text) FROM unnest(CAST(:ids AS text[]), CAST(:chars AS text[]), "
            "CAST(:dates AS timestamptz[]), CAST(:types AS text[]), CAST(:amounts AS bigint[]), "
            "CAST(:reasons AS text[]), CAST(:firsts AS text[]), CAST(:seconds AS text[])) "
            "ON CONFLICT (journal_id) DO NOTHING"
        ),
        {**cols, "rid": request_id},
    ).rowcount


def candidate_payments(conn: Connection) -> list[Row]:
    """Unlinked donations received by LOGISTICS characters, oldest first."""
    return list(conn.execute(text(
        "SELECT e.journal_id, e.amount, e.reason, e.first_party_id, e.date "
        + CANDIDATE_PAYMENTS + " ORDER BY e.date, e.journal_id"
    )))


def entry(conn: Connection, journal_id: str) -> Row:
    """One entry with its receiver's role and its link, if any."""
    row = conn.execute(
        text(
            "SELECT e.*, c.role AS receiver_role, l.participation_id AS linked_to "
            "FROM journal_entries e "
            "LEFT JOIN journal_characters c ON c.character_id = e.character_id "
            "LEFT JOIN journal_payment_links l ON l.journal_id = e.journal_id "
            "WHERE e.journal_id = :j"
        ),
        {"j": journal_id},
    ).one_or_none()
    if row is None:
        raise NotFound(f"journal entry {journal_id} does not exist")
    return row


# --- links --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Link:
    """One payment going to one participation.

    Parameters:
      journal_id, participation_id: the pair.
      amount: ISK minor units received.
      payer_character_id: who actually paid (the entry's first party).
      date: when it was paid.
      match_type: auto_exact, auto_contains, auto_fuzzy or manual.
      score: the memo's score (None for a manual link).
    """

    journal_id: str
    participation_id: str
    amount: int
    payer_character_id: str
    date: datetime
    match_type: str
    score: int | None


def insert_links(conn: Connection, links: Sequence[Link], *, request_id: str,
                 performed_by: str) -> dict[str, str]:
    """Record the links (the audit rows); returns journal id → cycle id of those inserted.

    A journal id already linked is skipped: the primary key allows one link per payment.
    """
    rows = conn.execute(
        text(
            "INSERT INTO journal_payment_links (journal_id, participation_id, cycle_id, amount, "
            "payer_character_id, match_type, score, performed_by, request_id) "
            "SELECT d.j, d.p, p.cycle_id, d.amt, d.payer, d.kind, d.score, :by, :rid "
            "FROM unnest(CAST(:js AS text[]), CAST(:ps AS text[]), CAST(:amts AS bigint[]), "
            "CAST(:payers AS text[]), CAST(:kinds AS text[]), CAST(:scores AS integer[])) "
            "AS d(j, p, amt, payer, kind, score) "
            "JOIN journal_participations p ON p.participation_id = d.p "
            "ON CONFLICT (journal_id) DO NOTHING RETURNING journal_id, cycle_id"
        ),
        {
            "js": [lk.journal_id for lk in links],
            "ps": [lk.participation_id for lk in links],
            "amts": [lk.amount for lk in links],
            "payers": [lk.payer_character_id for lk in links],
            "kinds": [lk.match_type for lk in links],
            "scores": [lk.score for lk in links],
            "by": performed_by,
            "rid": request_id,
        },
    )
    return {r.journal_id: r.cycle_id for r in rows}


def credit_participations(conn: Connection, received: dict[str, tuple[int, str, str]]) -> list[Row]:
    """Add what each participation received (participation id → (amount, first payer,
    first match type)); it is now opted in.  Returns the participations after the update."""
    ids = sorted(received)
    return list(conn.execute(
        text(
            "UPDATE journal_participations p SET amount = p.amount + d.amt, status = :opted, "
            "validated_at = COALESCE(p.validated_at, now()), "
            "payer_character_id = COALESCE(p.payer_character_id, d.payer), "
            "match_type = COALESCE(p.match_type, d.kind) "
            "FROM unnest(CAST(:ids AS text[]), CAST(:amts AS bigint[]), CAST(:payers AS text[]), "
            "CAST(:kinds AS text[])) AS d(id, amt, payer, kind) "
            "WHERE p.participation_id = d.id "
            "RETURNING p.participation_id, p.cycle_id, p.user_id, p.pledged, p.amount"
        ),
        {"ids": ids, "amts": [received[i][0] for i in ids], "payers": [received[i][1] for i in ids],
         "kinds": [received[i][2] for i in ids], "opted": OPTED_IN},
    ))


def set_link_transaction(conn: Connection, journal_ids: Iterable[str], transaction_id: int) -> None:
    conn.execute(
        text("UPDATE journal_payment_links SET ledger_transaction_id = :t WHERE journal_id = ANY(:j)"),
        {"t": transaction_id, "j": list(journal_ids)},
    )


def record_review(conn: Connection, verdicts: dict[str, tuple[str, dict[str, Any] | None]]) -> None:
    """Keep each entry's latest verdict (journal id → (state, note)); unchanged rows are not written."""
    if not verdicts:
        return
    ids = list(verdicts)
    conn.execute(
        text(
            "UPDATE journal_entries e SET review_state = d.state, review_note = CAST(d.note AS jsonb), "
            "reviewed_at = now() "
            "FROM unnest(CAST(:ids AS text[]), CAST(:states AS text[]), CAST(:notes AS text[])) "
            "AS d(id, state, note) "
            "WHERE e.journal_id = d.id AND (e.review_state IS DISTINCT FROM d.state "
            "OR e.review_note IS DISTINCT FROM CAST(d.note AS jsonb))"
        ),
        {"ids": ids, "states": [verdicts[i][0] for i in ids],
         "notes": [None if verdicts[i][1] is None else json.dumps(verdicts[i][1]) for i in ids]},
    )


class JournalRepository:
    """The journal's tables as the unit of work hands them out (``uow.journal``); the
    in-memory twin is in ``infra/uow_fake.py``.  Parameters: conn, the open connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def lock_matching(self) -> None:
        lock_matching(self.conn)

    def register_character(self, character_id: int, name: str, role: str) -> str:
        return register_character(self.conn, character_id, name, role)

    def plan_cycle(self, cycle_id: str) -> bool:
        return plan_cycle(self.conn, cycle_id)

    def cycle(self, cycle_id: str, *, for_update: bool = False) -> Any:
        return cycle(self.conn, cycle_id, for_update=for_update)

    def open_cycle(self, cycle_id: str) -> dict[str, int]:
        return open_cycle(self.conn, cycle_id)

    def close_cycle(self, cycle_id: str, closing_capital: int, closed_by: str) -> None:
        close_cycle(self.conn, cycle_id, closing_capital, closed_by)

    def create_participation(self, participation_id: str, cycle_id: str, user_id: str,
                             character_name: str, pledged: int) -> bool:
        return create_participation(self.conn, participation_id, cycle_id, user_id,
                                    character_name, pledged)

    def participation(self, participation_id: str, *, for_update: bool = False) -> Any:
        return participation(self.conn, participation_id, for_update=for_update)

    def expecting(self) -> list[Any]:
        return expecting(self.conn)

    def import_entries(self, entries: Sequence[Any], request_id: str) -> int:
        return import_entries(self.conn, entries, request_id)

    def candidate_payments(self) -> list[Any]:
        return candidate_payments(self.conn)

    def entry(self, journal_id: str) -> Any:
        return entry(self.conn, journal_id)

    def insert_links(self, links: Sequence[Link], *, request_id: str,
                     performed_by: str) -> dict[str, str]:
        return insert_links(self.conn, links, request_id=request_id, performed_by=performed_by)

    def credit_participations(self, received: dict[str, tuple[int, str, str]]) -> list[Any]:
        return credit_participations(self.conn, received)

    def set_link_transaction(self, journal_ids: Iterable[str], transaction_id: int) -> None:
        set_link_transaction(self.conn, journal_ids, transaction_id)

    def record_review(self, verdicts: dict[str, tuple[str, dict[str, Any] | None]]) -> None:
        record_review(self.conn, verdicts)
