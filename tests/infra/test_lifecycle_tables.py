"""Each table's status CHECK constraint holds exactly its lifecycle's statuses (issue 11):
the domain defines the statuses, the database can hold no other."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import text

from domain import challenges, conversions, markets, matching

TABLES = {
    "challenges": challenges.CHALLENGE,
    "treasury_matches": challenges.MATCH,
    "markets": markets.MARKET,
    "market_distributions": markets.DISTRIBUTION,
    "market_commitments": markets.COMMITMENT,
    "journal_cycles": matching.CYCLE,
    "journal_participations": matching.PARTICIPATION,
    "conversion_jobs": conversions.JOB,
}


def check_statuses(engine, table: str) -> set[str]:
    with engine.connect() as conn:
        defs = conn.execute(text(
            "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c "
            "JOIN pg_class t ON t.oid = c.conrelid WHERE t.relname = :t AND c.contype = 'c'"),
            {"t": table}).scalars().all()
    for d in defs:
        # CHECK ((status = ANY (ARRAY['open'::text, ...])))
        if re.match(r"CHECK \(\(status = ANY \(ARRAY\[", d):
            return set(re.findall(r"'([^']*)'::text", d))
    raise AssertionError(f"{table} has no status CHECK constraint: {defs}")


@pytest.mark.parametrize("table", sorted(TABLES))
def test_the_status_check_is_the_lifecycle(engine, table):
    assert check_statuses(engine, table) == set(TABLES[table].statuses)
