"""Set-based settlement: room on market_commitments' pages for its one UPDATE to be HOT.

A settlement moves every commitment of a market from ``active`` to ``settled`` in one
UPDATE (and a rollback back again).  ``status`` is in none of the table's three indexes,
so each new row version can stay on its page without touching an index (a HOT update) —
when the page has room for it.  At the default fillfactor (100) pages are full and every
one of a 100,000-commitment settlement's versions went to another page with an entry in
each of the three indexes; with fillfactor 50 a page keeps room for a new version of each
of its rows.  The cost: the table's heap takes about twice the space (its indexes do not
change).  Pages written before this migration keep their layout until rewritten.

Revision ID: 0015
Revises: 0014
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE market_commitments SET (fillfactor = 50)")


def downgrade() -> None:
    op.execute("ALTER TABLE market_commitments RESET (fillfactor)")
