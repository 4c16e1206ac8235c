"""Balance guard: tiers, configurable limits, the wallet audit trail, alert webhook deliveries.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

from domain.guard import TIERS, default_limits
from domain.money import CURRENCIES

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


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
    rows = []
    for tier in TIERS:
        for cur in CURRENCIES:
            lim = default_limits(tier, cur)
            rows.append(
                f"('{tier}', '{cur}', {lim.min_balance}, {lim.max_balance}, {lim.daily}, "
                f"{lim.weekly}, {lim.warning}, {lim.critical})"
            )
    op.execute(
        "INSERT INTO guard_limits (tier, currency, min_balance, max_balance, daily_limit, "
        "weekly_limit, warning_threshold, critical_threshold) VALUES "
        + ", ".join(rows)
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
