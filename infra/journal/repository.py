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

from sqlalchemy import Connection, Row, exists, func, literal_column, select, text, update
from sqlalchemy.dialects.postgresql import insert

from domain.errors import NotFound
from domain.matching import (
    CYCLE,
    CYCLE_TAKING_PAYMENTS,
    DONATION,
    EXPIRED,
    LOGISTICS,
    OPTED_IN,
    PARTICIPATION,
    TAKING_PAYMENT,
    expected_memo,
)
from infra.db.once import create_once
from infra.db.tables import (
    journal_characters as characters,
    journal_cycles as cycles,
    journal_entries as entries_t,
    journal_participations as participations,
    journal_payment_links as links_t,
)

#: pg_advisory_xact_lock key held by every step that links payments or opens a cycle,
#: so two matching runs (or a run and an admin link) never decide on the same payment.
MATCHING_LOCK = 0x6A6F75726E616C  # "journal"

#: Payments that may pay for a participation: donations received by LOGISTICS characters.
#: A fragment for the views' and the conditions' own statements; the domain's values are
#: bound (``CANDIDATE_PARAMS``), never written into the SQL.
CANDIDATE_PAYMENTS = """
    FROM journal_entries e
    JOIN journal_characters c ON c.character_id = e.character_id AND c.role = :candidate_role
    WHERE e.ref_type = :candidate_ref_type AND e.amount > 0
      AND NOT EXISTS (SELECT 1 FROM journal_payment_links l WHERE l.journal_id = e.journal_id)
"""
CANDIDATE_PARAMS = {"candidate_role": LOGISTICS, "candidate_ref_type": DONATION}


def _candidates():
    """``CANDIDATE_PAYMENTS`` as a Core select of the entries (for the repository)."""
    e = entries_t
    return (
        select(e.c.journal_id, e.c.amount, e.c.reason, e.c.first_party_id, e.c.date)
        .join(characters, (characters.c.character_id == e.c.character_id)
              & (characters.c.role == LOGISTICS))
        .where(e.c.ref_type == DONATION, e.c.amount > 0,
               ~exists().where(links_t.c.journal_id == e.c.journal_id))
    )


def lock_matching(conn: Connection) -> None:
    """Serialise with every other run, admin link and cycle opening (until commit)."""
    conn.execute(select(func.pg_advisory_xact_lock(MATCHING_LOCK)))


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
    new = insert(characters).values(character_id=str(character_id), name=name, role=role)
    row = conn.execute(
        new.on_conflict_do_update(
            index_elements=[characters.c.character_id],
            set_={"name": new.excluded.name, "role": new.excluded.role, "updated_at": func.now()},
            where=(characters.c.name != new.excluded.name) | (characters.c.role != new.excluded.role),
        ).returning(literal_column("(xmax = 0)").label("created"))
    ).one_or_none()
    if row is None:
        return "unchanged"
    return "created" if row.created else "updated"


def plan_cycle(conn: Connection, cycle_id: str) -> bool:
    """Create a planned cycle; False when it already exists (whatever its status)."""
    return conn.execute(
        insert(cycles).values(cycle_id=cycle_id).on_conflict_do_nothing()
        .returning(cycles.c.cycle_id)
    ).first() is not None


def cycle(conn: Connection, cycle_id: str, *, for_update: bool = False) -> Row:
    query = select(cycles).where(cycles.c.cycle_id == cycle_id)
    row = conn.execute(query.with_for_update() if for_update else query).one_or_none()
    if row is None:
        raise NotFound(f"cycle {cycle_id} does not exist")
    return row


def open_cycle(conn: Connection, cycle_id: str) -> dict[str, int]:
    """Expire the participations still awaiting payment (kept, out of the capital) and
    open the cycle with the capital its opted-in participations brought."""
    p = participations
    expired = conn.execute(
        update(p).where(p.c.cycle_id == cycle_id,
                        p.c.status.in_(sorted(PARTICIPATION.sources(EXPIRED))))
        .values(status=EXPIRED, expired_at=func.now())
    ).rowcount
    capital = conn.execute(
        select(func.count().label("n"), func.coalesce(func.sum(p.c.amount), 0).label("total"))
        .where(p.c.cycle_id == cycle_id, p.c.status == OPTED_IN)
    ).one()
    moved = conn.execute(
        update(cycles).where(cycles.c.cycle_id == cycle_id,
                             cycles.c.status.in_(sorted(CYCLE.sources("open"))))
        .values(status="open", opened_at=func.now(), initial_capital=int(capital.total))
        .returning(cycles.c.cycle_id)
    ).first()
    if moved is None:
        current = conn.execute(select(cycles.c.status)
                               .where(cycles.c.cycle_id == cycle_id)).scalar_one_or_none()
        if current is None:
            raise NotFound(f"cycle {cycle_id} does not exist")
        CYCLE.check(current, "open")
    return {"participants": int(capital.n), "expired": expired, "initial_capital": int(capital.total)}


def close_cycle(conn: Connection, cycle_id: str, closing_capital: int, closed_by: str) -> None:
    """open → closed, with the capital its account holds now."""
    conn.execute(
        update(cycles).where(cycles.c.cycle_id == cycle_id,
                             cycles.c.status.in_(sorted(CYCLE.sources("closed"))))
        .values(status="closed", closed_at=func.now(), closing_capital=closing_capital,
                closed_by=closed_by)
    )


# --- participations -----------------------------------------------------------------

def create_participation(conn: Connection, participation_id: str, cycle_id: str, user_id: str,
                         character_name: str, pledged: int) -> bool:
    """Create a participation awaiting payment; False when the very same one exists.

    Refused when the id exists on other terms (``domain.resends``).
    """
    return create_once(
        conn, participations,
        {"participation_id": participation_id, "cycle_id": cycle_id, "user_id": user_id,
         "character_name": character_name, "memo": expected_memo(cycle_id, character_name),
         "pledged": pledged},
        key=("participation_id",), terms=("cycle_id", "user_id", "character_name", "pledged"),
        what=f"participation {participation_id}")


def participation(conn: Connection, participation_id: str, *, for_update: bool = False) -> Row:
    p = participations
    query = (select(p, cycles.c.status.label("cycle_status"))
             .join(cycles, cycles.c.cycle_id == p.c.cycle_id)
             .where(p.c.participation_id == participation_id))
    row = conn.execute(query.with_for_update(of=p) if for_update else query).one_or_none()
    if row is None:
        raise NotFound(f"participation {participation_id} does not exist")
    return row


def expecting(conn: Connection) -> list[Row]:
    """Participations that may take a payment: awaiting, or opted in and topping up,
    in a cycle not yet open."""
    p = participations
    return list(conn.execute(
        select(p.c.participation_id, p.c.cycle_id, p.c.character_name, p.c.pledged)
        .join(cycles, cycles.c.cycle_id == p.c.cycle_id)
        .where(cycles.c.status == CYCLE_TAKING_PAYMENTS, p.c.status.in_(TAKING_PAYMENT))
        .order_by(p.c.participation_id)
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
    e = entries_t
    return list(conn.execute(_candidates().order_by(e.c.date, e.c.journal_id)))


def entry(conn: Connection, journal_id: str) -> Row:
    """One entry with its receiver's role and its link, if any."""
    e = entries_t
    row = conn.execute(
        select(e, characters.c.role.label("receiver_role"),
               links_t.c.participation_id.label("linked_to"))
        .outerjoin(characters, characters.c.character_id == e.c.character_id)
        .outerjoin(links_t, links_t.c.journal_id == e.c.journal_id)
        .where(e.c.journal_id == journal_id)
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
    conn.execute(update(links_t).where(links_t.c.journal_id.in_(list(journal_ids)))
                 .values(ledger_transaction_id=transaction_id))


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
