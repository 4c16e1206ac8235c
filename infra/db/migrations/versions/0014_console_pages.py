"""The console's pages: indexes for the orders its paged lists read in.

A market's commitments newest first, a cycle's participations in order, and the live dead letters newest first (of one queue
or of all), are read a page at a time with LIMIT/OFFSET: with these indexes a page is an
index range scan instead of a sort of every commitment or dead letter.

Revision ID: 0014
Revises: 0012
"""

from alembic import op

revision = "0014"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE INDEX market_commitments_by_market
            ON market_commitments (market_id, created_at, commitment_id);
        CREATE INDEX journal_participations_page
            ON journal_participations (cycle_id, created_at, participation_id);
        CREATE INDEX dead_letters_live_by_age
            ON dead_letters (dead_lettered_at, id) WHERE status = 'dead';
        CREATE INDEX dead_letters_live_by_queue
            ON dead_letters (queue, dead_lettered_at, id) WHERE status = 'dead';
        """
    )


def downgrade() -> None:
    op.execute("DROP INDEX dead_letters_live_by_queue; DROP INDEX dead_letters_live_by_age; "
               "DROP INDEX journal_participations_page; DROP INDEX market_commitments_by_market;")
