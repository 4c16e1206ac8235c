"""Create a row once under the id its sender chose (``domain.resends``' rule, on a table).

    created = create_once(conn, tables.journal_participations, values,
                          key=("participation_id",), terms=("cycle_id", "user_id", ...),
                          what=f"participation {pid}")

One INSERT … ON CONFLICT DO NOTHING; only a resend reads the existing row back to
compare its terms.  A concurrent create of the same id waits for the other transaction
(the unique index), then sees its row.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from sqlalchemy import Connection, Table, and_, literal, select
from sqlalchemy.dialects.postgresql import insert

from domain.resends import check_same_terms


def create_once(conn: Connection, table: Table, values: Mapping[str, Any], *,
                key: Sequence[str], terms: Sequence[str], what: str) -> bool:
    """True when the row was created; False when it existed on the same ``terms``;
    Refused (``domain.resends``) when it exists on others."""
    created = conn.execute(
        insert(table).values(**values).on_conflict_do_nothing(index_elements=list(key))
        .returning(literal(1))
    ).first()
    if created is not None:
        return True
    existing = conn.execute(
        select(*(table.c[t] for t in terms)).where(and_(*(table.c[k] == values[k] for k in key)))
    ).one()._mapping
    check_same_terms(what, existing, {t: values[t] for t in terms})
    return False
