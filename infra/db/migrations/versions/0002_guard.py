"""Balance guard: tiers, configurable limits, the wallet audit trail, alert webhook deliveries.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

#: SPEC §4's tier table as it stood at this revision, in minor units (a migration seeds
#: literals, never live domain code: a later change of the domain's table is a migration of
#: its own).  tests/infra/test_migration_seeds.py holds it equal to domain.guard today.
#: (tier, currency, min_balance, max_balance, daily, weekly, warning, critical)
SEED_LIMITS = [
    ('bronze', 'NGN', -1000000, 100000000, 5000000, 20000000, 100000, 10000),
    ('bronze', 'USD', -1000000, 100000000, 5000000, 20000000, 100000, 10000),
    ('bronze', 'USDC', -10000000000, 1000000000000, 50000000000, 200000000000, 1000000000, 100000000),
    ('bronze', 'ISK', -1000000, 100000000, 5000000, 20000000, 100000, 10000),
    ('bronze', 'TOKEN', -10000, 1000000, 50000, 200000, 1000, 100),
    ('silver', 'NGN', -1000000, 100000000, 10000000, 50000000, 100000, 10000),
    ('silver', 'USD', -1000000, 100000000, 10000000, 50000000, 100000, 10000),
    ('silver', 'USDC', -10000000000, 1000000000000, 100000000000, 500000000000, 1000000000, 100000000),
    ('silver', 'ISK', -1000000, 100000000, 10000000, 50000000, 100000, 10000),
    ('silver', 'TOKEN', -10000, 1000000, 100000, 500000, 1000, 100),
    ('gold', 'NGN', -1500000, 150000000, 15000000, 75000000, 100000, 10000),
    ('gold', 'USD', -1500000, 150000000, 15000000, 75000000, 100000, 10000),
    ('gold', 'USDC', -15000000000, 1500000000000, 150000000000, 750000000000, 1000000000, 100000000),
    ('gold', 'ISK', -1500000, 150000000, 15000000, 75000000, 100000, 10000),
    ('gold', 'TOKEN', -15000, 1500000, 150000, 750000, 1000, 100),
    ('platinum', 'NGN', -2500000, 250000000, 25000000, 100000000, 100000, 10000),
    ('platinum', 'USD', -2500000, 250000000, 25000000, 100000000, 100000, 10000),
    ('platinum', 'USDC', -25000000000, 2500000000000, 250000000000, 1000000000000, 1000000000, 100000000),
    ('platinum', 'ISK', -2500000, 250000000, 25000000, 100000000, 100000, 10000),
    ('platinum', 'TOKEN', -25000, 2500000, 250000, 1000000, 1000, 100),
    ('diamond', 'NGN', -5000000, 500000000, 50000000, 200000000, 100000, 10000),
    ('diamond', 'USD', -5000000, 500000000, 50000000, 200000000, 100000, 10000),
    ('diamond', 'USDC', -50000000000, 5000000000000, 500000000000, 2000000000000, 1000000000, 100000000),
    ('diamond', 'ISK', -5000000, 500000000, 50000000, 200000000, 100000, 10000),
    ('diamond', 'TOKEN', -50000, 5000000, 500000, 2000000, 1000, 100),
]


def upgrade() -> None:
    op.execute(
        """
        -- A user without a row is bronze (the default tier).
        CREATE TABLE user_tiers (
            user_id text PRIMARY KEY,
            tier text NOT NULL CHECK (tier IN ('bronze', 'silver', 'gold', 'platinum', 'diamond')),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE tier_changes (
            id bigserial PRIMARY KEY,
            user_id text NOT NULL,
            previous_tier text NOT NULL,
            tier text NOT NULL,
            request_id text,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX tier_changes_user ON tier_changes (user_id, id);

        -- What each tier allows per currency, in minor units (seeded from SPEC §4;
        -- operators change rows with `ballast guard set-limit`).
        CREATE TABLE guard_limits (
            tier text NOT NULL,
            currency text NOT NULL,
            min_balance bigint NOT NULL,
            max_balance bigint NOT NULL,
            daily_limit bigint NOT NULL CHECK (daily_limit >= 0),
            weekly_limit bigint NOT NULL CHECK (weekly_limit >= 0),
            warning_threshold bigint NOT NULL,
            critical_threshold bigint NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            updated_by text NOT NULL DEFAULT 'migration',
            PRIMARY KEY (tier, currency),
            CHECK (min_balance <= max_balance),
            CHECK (critical_threshold <= warning_threshold)
        );

        -- Every change to a user wallet, system ones included (append-only).
        CREATE TABLE wallet_audit (
            id bigserial PRIMARY KEY,
            transaction_id bigint NOT NULL REFERENCES ledger_transactions(id),
            user_id text NOT NULL,
            currency text NOT NULL,
            kind text NOT NULL,
            user_initiated boolean NOT NULL,
            amount bigint NOT NULL,
            balance_before bigint NOT NULL,
            balance_after bigint NOT NULL CHECK (balance_after = balance_before + amount),
            reason text,
            performed_by text,
            metadata jsonb,
            risk_score smallint NOT NULL CHECK (risk_score BETWEEN 0 AND 100),
            tier text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        -- The trailing-window sums of the daily and weekly limits read only this.
        CREATE INDEX wallet_audit_windows ON wallet_audit (user_id, currency, created_at)
            INCLUDE (amount) WHERE user_initiated;
        CREATE INDEX wallet_audit_user ON wallet_audit (user_id, id);
        CREATE INDEX wallet_audit_time ON wallet_audit (created_at, currency);
        CREATE INDEX wallet_audit_transaction ON wallet_audit (transaction_id);
        CREATE FUNCTION wallet_audit_append_only() RETURNS trigger AS $$
        BEGIN
            RAISE EXCEPTION 'the wallet audit trail is append-only';
        END;
        $$ LANGUAGE plpgsql;
        CREATE TRIGGER wallet_audit_no_update BEFORE UPDATE OR DELETE ON wallet_audit
            FOR EACH ROW EXECUTE FUNCTION wallet_audit_append_only();

        -- Alerts to POST to BALLAST_ALERT_WEBHOOK_URL, written with the alert.
        CREATE TABLE alert_deliveries (
            id bigserial PRIMARY KEY,
            alert_id bigint NOT NULL REFERENCES alerts(id),
            event text NOT NULL,
            body jsonb NOT NULL,
            status text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'delivered', 'expired')),
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            last_error text,
            created_at timestamptz NOT NULL DEFAULT now(),
            delivered_at timestamptz
        );
        CREATE INDEX alert_deliveries_pending ON alert_deliveries (next_attempt_at, id)
            WHERE status = 'pending';
        CREATE INDEX alerts_kind_open ON alerts (kind) WHERE status <> 'resolved';
        CREATE INDEX alerts_user ON alerts ((data->>'user_id')) WHERE status <> 'resolved';
        """
    )
    op.execute(
        "INSERT INTO guard_limits (tier, currency, min_balance, max_balance, daily_limit, "
        "weekly_limit, warning_threshold, critical_threshold) VALUES "
        + ", ".join(f"('{t}', '{c}', {lo}, {hi}, {d}, {w}, {warn}, {crit})"
                    for t, c, lo, hi, d, w, warn, crit in SEED_LIMITS)
        + " ON CONFLICT DO NOTHING"
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX IF EXISTS alerts_user; DROP INDEX IF EXISTS alerts_kind_open;
        DROP TABLE alert_deliveries;
        DROP TABLE wallet_audit; DROP FUNCTION wallet_audit_append_only();
        DROP TABLE guard_limits; DROP TABLE tier_changes; DROP TABLE user_tiers;
        """
    )
