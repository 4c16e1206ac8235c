"""What the originals had (issue 14): challenge limits, refunded matches and failed
settlements; market disputes and settlement retries; closing cycles; resolving alerts by hand.

Revision ID: 0009
Revises: 0006
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- Challenges: a time limit and a cap on joins; a settlement that failed for good.
        ALTER TABLE challenges
            ADD COLUMN closes_at timestamptz,
            ADD COLUMN max_participants integer CHECK (max_participants > 0),
            ADD COLUMN settlement_failure text,
            ADD COLUMN settlement_failed_at timestamptz,
            ADD COLUMN settlement_retries integer NOT NULL DEFAULT 0;
        ALTER TABLE challenges DROP CONSTRAINT challenges_status_check;
        ALTER TABLE challenges ADD CONSTRAINT challenges_status_check
            CHECK (status IN ('open', 'resolved', 'settlement_failed', 'settled'));

        -- A treasury match of a void challenge ends refunded (the original's states are
        -- active, settled, refunded): no result, payout = its stake, P&L 0.
        ALTER TABLE treasury_matches DROP CONSTRAINT treasury_matches_status_check;
        ALTER TABLE treasury_matches ADD CONSTRAINT treasury_matches_status_check
            CHECK (status IN ('reserved', 'active', 'settled', 'refunded'));
        UPDATE treasury_matches SET status = 'refunded', result = NULL,
            treasury_payout = stake, pnl = 0
            WHERE status = 'settled' AND result = 'void';
        ALTER TABLE treasury_matches DROP CONSTRAINT treasury_matches_result_check;
        ALTER TABLE treasury_matches ADD CONSTRAINT treasury_matches_result_check
            CHECK (result IN ('treasury_won', 'treasury_lost'));
        ALTER TABLE treasury_matches ADD CONSTRAINT treasury_matches_refunded
            CHECK (status <> 'refunded' OR (treasury_payout = stake AND pnl = 0));

        -- Markets: a resolved market can be held disputed; a failed settlement retried.
        ALTER TABLE markets DROP CONSTRAINT markets_status_check;
        ALTER TABLE markets ADD CONSTRAINT markets_status_check
            CHECK (status IN ('open', 'settling', 'settled', 'voided', 'closed', 'disputed'));
        ALTER TABLE market_distributions
            ADD COLUMN retries integer NOT NULL DEFAULT 0,
            ADD COLUMN retried_by text,
            ADD COLUMN retried_at timestamptz;

        CREATE TABLE market_disputes (
            id bigserial PRIMARY KEY,
            market_id text NOT NULL REFERENCES markets(market_id),
            distribution_id bigint NOT NULL REFERENCES market_distributions(id),
            reason text NOT NULL,
            disputed_by text NOT NULL,
            -- open → confirmed | rolled_back; a rolled-back one records its re-resolution
            status text NOT NULL DEFAULT 'open'
                CHECK (status IN ('open', 'confirmed', 'rolled_back')),
            ended_by text,
            end_note text,
            ended_at timestamptz,
            reresolved_distribution_id bigint REFERENCES market_distributions(id),
            reresolved_outcome text,
            reresolved_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT market_disputes_ended CHECK ((status = 'open') = (ended_at IS NULL))
        );
        -- A market is not disputed twice at once.
        CREATE UNIQUE INDEX market_disputes_one_open ON market_disputes (market_id)
            WHERE status = 'open';
        CREATE INDEX market_disputes_market ON market_disputes (market_id, id);

        -- Cycles: who closed one and the capital it closed with.
        ALTER TABLE journal_cycles
            ADD COLUMN closing_capital bigint,
            ADD COLUMN closed_by text;

        -- Alerts resolved by an operator: who and why.
        ALTER TABLE alerts
            ADD COLUMN resolved_by text,
            ADD COLUMN resolution_note text;

        -- Recent changes by operator (audit recent --by, analytics --agent).
        CREATE INDEX wallet_audit_performed_by ON wallet_audit (performed_by, id);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX wallet_audit_performed_by;
        ALTER TABLE alerts DROP COLUMN resolution_note, DROP COLUMN resolved_by;
        ALTER TABLE journal_cycles DROP COLUMN closed_by, DROP COLUMN closing_capital;
        DROP TABLE market_disputes;
        ALTER TABLE market_distributions DROP COLUMN retried_at, DROP COLUMN retried_by,
            DROP COLUMN retries;
        UPDATE markets SET status = 'settled' WHERE status = 'disputed';
        ALTER TABLE markets DROP CONSTRAINT markets_status_check;
        ALTER TABLE markets ADD CONSTRAINT markets_status_check
            CHECK (status IN ('open', 'settling', 'settled', 'voided', 'closed'));
        ALTER TABLE treasury_matches DROP CONSTRAINT treasury_matches_refunded;
        ALTER TABLE treasury_matches DROP CONSTRAINT treasury_matches_result_check;
        ALTER TABLE treasury_matches ADD CONSTRAINT treasury_matches_result_check
            CHECK (result IN ('treasury_won', 'treasury_lost', 'void'));
        UPDATE treasury_matches SET status = 'settled', result = 'void' WHERE status = 'refunded';
        ALTER TABLE treasury_matches DROP CONSTRAINT treasury_matches_status_check;
        ALTER TABLE treasury_matches ADD CONSTRAINT treasury_matches_status_check
            CHECK (status IN ('reserved', 'active', 'settled'));
        UPDATE challenges SET status = 'resolved' WHERE status = 'settlement_failed';
        ALTER TABLE challenges DROP CONSTRAINT challenges_status_check;
        ALTER TABLE challenges ADD CONSTRAINT challenges_status_check
            CHECK (status IN ('open', 'resolved', 'settled'));
        ALTER TABLE challenges DROP COLUMN settlement_retries, DROP COLUMN settlement_failed_at,
            DROP COLUMN settlement_failure, DROP COLUMN max_participants, DROP COLUMN closes_at;
        """
    )
