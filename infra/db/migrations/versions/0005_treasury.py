"""Treasury engine: buffers, providers, conversion jobs.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# SPEC §3's table, in minor units (USDC has 6 decimals, USD 2); kept literal so
# the migration does not change when the code's defaults do.
BUFFERS = [
    ("system_buffer_usdc", "USDC", 10_000_000_000, 50_000_000_000, 100_000_000_000, 20_000_000_000),
    ("system_buffer_fiat", "USD", 2_000_000, 10_000_000, 20_000_000, 5_000_000),
    ("broker_operational", "USD", 5_000_000, 20_000_000, 50_000_000, 10_000_000),
]


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE treasury_buffers (
            account_type text PRIMARY KEY,
            currency text NOT NULL,
            min_amount bigint NOT NULL,
            target_amount bigint NOT NULL,
            max_amount bigint NOT NULL,
            batch_amount bigint NOT NULL CHECK (batch_amount > 0),
            updated_at timestamptz NOT NULL DEFAULT now(),
            updated_by text,
            CHECK (0 <= min_amount AND min_amount < target_amount AND target_amount < max_amount)
        );

        -- Operator switches of the engine (auto_rebalance ...), one row per key.
        CREATE TABLE treasury_settings (
            key text PRIMARY KEY,
            value jsonb NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            updated_by text
        );

        CREATE TABLE conversion_providers (
            name text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
            kind text NOT NULL CHECK (kind IN ('simulated', 'http')),
            priority integer NOT NULL,
            status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused')),
            directions text[] NOT NULL DEFAULT ARRAY['USD->USDC', 'USDC->USD'],
            -- Limits in USD cents at par, whatever the direction.
            min_amount bigint NOT NULL DEFAULT 0 CHECK (min_amount >= 0),
            max_amount bigint CHECK (max_amount > 0),
            daily_limit bigint CHECK (daily_limit > 0),
            config jsonb NOT NULL DEFAULT '{}',
            success_count bigint NOT NULL DEFAULT 0,
            failure_count bigint NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );

        CREATE TABLE conversion_jobs (
            id bigserial PRIMARY KEY,
            kind text NOT NULL CHECK (kind IN ('replenishment', 'manual')),
            direction text NOT NULL CHECK (direction IN ('USD->USDC', 'USDC->USD')),
            source_account text NOT NULL,
            destination_account text NOT NULL,
            source_currency text NOT NULL,
            destination_currency text NOT NULL,
            source_amount bigint NOT NULL CHECK (source_amount > 0),
            destination_amount bigint,
            fee_amount bigint,
            status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending',
                'provider_submitted', 'provider_processing', 'completed', 'failed', 'cancelled')),
            provider text REFERENCES conversion_providers(name),
            attempts integer NOT NULL DEFAULT 0,
            transit_moved boolean NOT NULL DEFAULT false,
            requested_by text NOT NULL,
            trigger text NOT NULL,
            failure_reason text,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            submitted_at timestamptz,
            finished_at timestamptz,
            stale_at timestamptz
        );
        -- At most one replenishment in flight per buffer, whatever races.
        CREATE UNIQUE INDEX conversion_jobs_one_replenishment_in_flight
            ON conversion_jobs (destination_account)
            WHERE kind = 'replenishment'
              AND status IN ('pending', 'provider_submitted', 'provider_processing');
        CREATE INDEX conversion_jobs_active ON conversion_jobs (id)
            WHERE status IN ('pending', 'provider_submitted', 'provider_processing');
        CREATE INDEX conversion_jobs_finished ON conversion_jobs (finished_at);

        CREATE TABLE conversion_job_transitions (
            id bigserial PRIMARY KEY,
            job_id bigint NOT NULL REFERENCES conversion_jobs(id),
            from_status text,
            to_status text NOT NULL,
            note text,
            at timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        CREATE INDEX conversion_job_transitions_job ON conversion_job_transitions (job_id, id);

        -- One row per submission to a provider, with its own idempotency key.
        CREATE TABLE conversion_attempts (
            id bigserial PRIMARY KEY,
            job_id bigint NOT NULL REFERENCES conversion_jobs(id),
            attempt_no integer NOT NULL,
            provider text NOT NULL REFERENCES conversion_providers(name),
            idempotency_key text NOT NULL UNIQUE,
            par_amount bigint NOT NULL,
            status text NOT NULL DEFAULT 'submitting' CHECK (status IN ('submitting', 'accepted',
                'rejected', 'error', 'completed', 'failed', 'abandoned')),
            provider_ref text,
            error text,
            created_at timestamptz NOT NULL DEFAULT now(),
            answered_at timestamptz,
            outcome_at timestamptz,
            UNIQUE (job_id, attempt_no)
        );
        CREATE INDEX conversion_attempts_provider ON conversion_attempts (provider, created_at);

        -- The simulated provider's own books: an external system that happens to
        -- live in our database so that every worker process sees the same orders.
        CREATE TABLE simulated_provider_orders (
            provider text NOT NULL,
            idempotency_key text NOT NULL,
            direction text NOT NULL,
            source_amount bigint NOT NULL,
            destination_amount bigint NOT NULL,
            fee_amount bigint NOT NULL,
            rate_ppm bigint NOT NULL,
            state text NOT NULL DEFAULT 'processing',
            polls integer NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (provider, idempotency_key)
        );
        """
    )
    for account_type, currency, mn, target, mx, batch in BUFFERS:
        op.execute(
            f"""
            INSERT INTO treasury_buffers (account_type, currency, min_amount, target_amount,
                                          max_amount, batch_amount, updated_by)
            VALUES ('{account_type}', '{currency}', {mn}, {target}, {mx}, {batch}, 'migration')
            ON CONFLICT (account_type) DO NOTHING;
            INSERT INTO accounts (code, currency, allow_negative)
            VALUES ('buffer:{account_type}', '{currency}', false) ON CONFLICT (code) DO NOTHING;
            """
        )
    for cur in ("USD", "USDC"):
        op.execute(
            f"""
            INSERT INTO accounts (code, currency, allow_negative) VALUES
                ('transit:{cur}', '{cur}', false),
                ('fees:conversion:{cur}', '{cur}', false)
            ON CONFLICT (code) DO NOTHING
            """
        )
    op.execute(
        """INSERT INTO treasury_settings (key, value, updated_by)
           VALUES ('auto_rebalance', 'true', 'migration') ON CONFLICT DO NOTHING"""
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE simulated_provider_orders; DROP TABLE conversion_attempts;
        DROP TABLE conversion_job_transitions; DROP TABLE conversion_jobs;
        DROP TABLE conversion_providers; DROP TABLE treasury_settings; DROP TABLE treasury_buffers;
        """
    )
