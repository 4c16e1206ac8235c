"""Market payouts: markets, commitments, distributions.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE markets (
            market_id text PRIMARY KEY,
            title text NOT NULL,
            kind text NOT NULL CHECK (kind IN ('binary', 'multi')),
            currency text NOT NULL,
            creator_id text NOT NULL,
            creator_fee_bps integer NOT NULL CHECK (creator_fee_bps BETWEEN 100 AND 500),
            house_fee_bps integer NOT NULL CHECK (house_fee_bps BETWEEN 0 AND 10000),
            status text NOT NULL DEFAULT 'open'
                CHECK (status IN ('open', 'settling', 'settled', 'voided', 'closed')),
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT markets_fees_within_pool CHECK (creator_fee_bps + house_fee_bps <= 10000)
        );

        CREATE TABLE market_options (
            market_id text NOT NULL REFERENCES markets(market_id),
            option_id text NOT NULL,
            label text NOT NULL,
            ordinal integer NOT NULL,
            PRIMARY KEY (market_id, option_id),
            UNIQUE (market_id, ordinal)
        );

        CREATE TABLE market_commitments (
            commitment_id text PRIMARY KEY,
            market_id text NOT NULL REFERENCES markets(market_id),
            user_id text NOT NULL,
            option_id text NOT NULL,
            position text CHECK (position IN ('yes', 'no')),
            method text NOT NULL CHECK (method IN ('option_id', 'position')),
            amount bigint NOT NULL CHECK (amount > 0),
            status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'settled')),
            -- the wallet account, so settlement locks wallets in ascending id order
            wallet_account_id bigint NOT NULL REFERENCES accounts(id),
            transaction_id bigint NOT NULL REFERENCES ledger_transactions(id),
            created_at timestamptz NOT NULL DEFAULT now(),
            FOREIGN KEY (market_id, option_id) REFERENCES market_options(market_id, option_id)
        );
        CREATE INDEX market_commitments_settle_order
            ON market_commitments (market_id, wallet_account_id, commitment_id);

        CREATE TABLE market_distributions (
            id bigserial PRIMARY KEY,
            market_id text NOT NULL REFERENCES markets(market_id),
            kind text NOT NULL CHECK (kind IN ('resolved', 'refunded', 'void')),
            winning_option_id text,
            status text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'completed', 'failed', 'rolled_back')),
            requested_by text NOT NULL,
            reason text,
            pool bigint,
            house_fee bigint,
            creator_fee bigint,
            winner_pool bigint,
            winning_total bigint,
            breakage bigint,
            paid bigint,
            commitments integer,
            winners integer,
            failure text,
            created_at timestamptz NOT NULL DEFAULT now(),
            completed_at timestamptz,
            rolled_back_at timestamptz,
            rolled_back_by text,
            rollback_reason text,
            CONSTRAINT market_distributions_add_up CHECK (
                status NOT IN ('completed', 'rolled_back')
                OR paid + house_fee + creator_fee + breakage = pool)
        );
        -- At most one live (pending or completed) distribution per market: resolving twice pays once.
        CREATE UNIQUE INDEX market_distributions_one_live
            ON market_distributions (market_id) WHERE status IN ('pending', 'completed');
        CREATE INDEX market_distributions_market ON market_distributions (market_id, id);

        -- One audit line per commitment per distribution.
        CREATE TABLE market_distribution_lines (
            distribution_id bigint NOT NULL REFERENCES market_distributions(id),
            commitment_id text NOT NULL REFERENCES market_commitments(commitment_id),
            user_id text NOT NULL,
            option_id text NOT NULL,
            method text NOT NULL,
            amount bigint NOT NULL,
            result text NOT NULL CHECK (result IN ('won', 'lost', 'refunded')),
            share numeric NOT NULL CHECK (share >= 0 AND share <= 1),
            payout bigint NOT NULL CHECK (payout >= 0),
            profit bigint NOT NULL,
            PRIMARY KEY (distribution_id, commitment_id)
        );

        -- Every ledger transaction a distribution posted, and its reversal once rolled back.
        CREATE TABLE market_distribution_transactions (
            transaction_id bigint PRIMARY KEY REFERENCES ledger_transactions(id),
            distribution_id bigint NOT NULL REFERENCES market_distributions(id),
            purpose text NOT NULL,
            reversal_id bigint REFERENCES ledger_transactions(id)
        );
        CREATE INDEX market_distribution_transactions_dist
            ON market_distribution_transactions (distribution_id);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE market_distribution_transactions; DROP TABLE market_distribution_lines;
        DROP TABLE market_distributions; DROP TABLE market_commitments;
        DROP TABLE market_options; DROP TABLE markets;
        """
    )
