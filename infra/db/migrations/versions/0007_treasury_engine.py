"""Treasury engine, complete: operator views, overrides, quotes, probes, callbacks, custody.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Kept literal (SPEC §3): equal to domain.buffers.status and domain.providers.is_healthy,
# held so by property tests (tests/infra/test_treasury_views.py).
HEALTH_MIN_ATTEMPTS = 10
HEALTH_MIN_SUCCESS_BPS = 8_000
#: A probe older than this says nothing (seconds).
PROBE_FRESH_S = 300


def upgrade() -> None:
    op.execute(
        f"""
        -- Cost-aware selection: what each provider quoted and why this one was chosen.
        ALTER TABLE conversion_attempts ADD COLUMN quotes jsonb, ADD COLUMN decision text;

        -- Health probes (the scheduler's probe_providers) and the callback secret.
        ALTER TABLE conversion_providers
            ADD COLUMN probe_healthy boolean,
            ADD COLUMN probed_at timestamptz,
            ADD COLUMN probe_error text,
            ADD COLUMN callback_secret text;

        -- Every operator lever on the engine: who pulled it, when, why, on what evidence.
        CREATE TABLE treasury_overrides (
            id bigserial PRIMARY KEY,
            action text NOT NULL CHECK (action IN ('freeze', 'thaw', 'complete', 'fail',
                'rebalance', 'pause_rebalancing', 'resume_rebalancing', 'set_thresholds',
                'pause_provider', 'resume_provider')),
            job_id bigint REFERENCES conversion_jobs(id),
            performed_by text NOT NULL CHECK (performed_by <> ''),
            reason text,
            evidence text,
            data jsonb,
            at timestamptz NOT NULL DEFAULT now(),
            CHECK (action NOT IN ('complete', 'fail') OR (job_id IS NOT NULL AND reason <> ''
                                                             AND evidence <> ''))
        );
        CREATE INDEX treasury_overrides_job ON treasury_overrides (job_id);

        -- Provider callbacks seen, by their nonce: a replay is refused.
        CREATE TABLE conversion_callback_nonces (
            provider text NOT NULL,
            nonce text NOT NULL,
            idempotency_key text,
            received_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (provider, nonce)
        );

        -- The custodian stand-in: balances a custodian (the chain for USDC, a bank for USD)
        -- reports for a buffer, as of a moment.
        CREATE TABLE custodian_reports (
            id bigserial PRIMARY KEY,
            account_type text NOT NULL REFERENCES treasury_buffers(account_type),
            balance bigint NOT NULL,
            as_of timestamptz NOT NULL DEFAULT now(),
            reported_by text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX custodian_reports_latest ON custodian_reports (account_type, as_of DESC, id DESC);

        CREATE FUNCTION treasury_buffer_status(balance bigint, mn bigint, target bigint, mx bigint)
        RETURNS text LANGUAGE sql IMMUTABLE AS $$
            SELECT CASE WHEN balance < mn THEN 'CRITICAL_LOW'
                        WHEN balance < target THEN 'BELOW_TARGET'
                        WHEN balance > mx THEN 'OVER_CAPITALIZED'
                        ELSE 'HEALTHY' END
        $$;

        CREATE FUNCTION treasury_provider_stats_healthy(successes bigint, failures bigint)
        RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
            SELECT successes + failures < {HEALTH_MIN_ATTEMPTS}
                OR successes * 10000 >= {HEALTH_MIN_SUCCESS_BPS} * (successes + failures)
        $$;

        -- Midnight today in the zone daily volumes reset in (synced from BALLAST_TIMEZONE
        -- by ``ballast migrate``).
        CREATE FUNCTION treasury_day_start() RETURNS timestamptz LANGUAGE sql STABLE AS $$
            SELECT date_trunc('day', now() AT TIME ZONE z) AT TIME ZONE z
            FROM (SELECT COALESCE((SELECT value #>> '{{}}' FROM treasury_settings
                                   WHERE key = 'timezone'), 'UTC') AS z) t
        $$;

        CREATE VIEW v_buffer_status AS
        SELECT b.account_type, b.currency, COALESCE(a.balance, 0) AS balance,
               b.min_amount AS min, b.target_amount AS target, b.max_amount AS max,
               treasury_buffer_status(COALESCE(a.balance, 0), b.min_amount, b.target_amount,
                                      b.max_amount) AS status
        FROM treasury_buffers b
        LEFT JOIN accounts a ON a.code = 'buffer:' || b.account_type
        ORDER BY b.account_type;

        CREATE VIEW v_provider_health AS
        WITH w AS (
            SELECT provider,
                   count(*) FILTER (WHERE status = 'completed') AS successes,
                   count(*) FILTER (WHERE status IN ('rejected', 'error', 'failed')) AS failures
            FROM conversion_attempts WHERE outcome_at >= now() - interval '24 hours'
            GROUP BY provider
        ), v AS (
            SELECT provider, sum(par_amount) AS used FROM conversion_attempts
            WHERE status IN ('submitting', 'accepted', 'completed')
              AND created_at >= treasury_day_start()
            GROUP BY provider
        ), p AS (
            SELECT p.name, p.status, p.priority, COALESCE(w.successes, 0) AS successes,
                   COALESCE(w.failures, 0) AS failures, COALESCE(v.used, 0) AS daily_volume_used,
                   CASE WHEN p.probed_at >= now() - interval '{PROBE_FRESH_S} seconds'
                        THEN p.probe_healthy END AS probe_healthy,
                   p.probed_at
            FROM conversion_providers p
            LEFT JOIN w ON w.provider = p.name LEFT JOIN v ON v.provider = p.name
        )
        SELECT name, status, priority,
               CASE WHEN successes + failures > 0
                    THEN round(successes::numeric / (successes + failures), 4)::float8 END
                    AS success_rate,
               daily_volume_used::bigint AS daily_volume_used,
               treasury_provider_stats_healthy(successes, failures)
                   AND probe_healthy IS DISTINCT FROM false AS healthy,
               CASE probe_healthy WHEN true THEN 'up' WHEN false THEN 'down' END AS probe,
               probed_at
        FROM p ORDER BY priority, name;

        CREATE VIEW v_active_conversion_jobs AS
        SELECT id AS job_id, direction, source_amount, destination_amount, status, provider,
               attempts, created_at, source_account, destination_account, submitted_at,
               stale_at IS NOT NULL AS stale
        FROM conversion_jobs
        WHERE status IN ('pending', 'provider_submitted', 'provider_processing')
        ORDER BY id DESC;
        """
    )
    op.execute(
        """INSERT INTO treasury_settings (key, value, updated_by) VALUES
               ('timezone', '"UTC"', 'migration'),
               ('conversions_frozen', '{"frozen": false}', 'migration')
           ON CONFLICT DO NOTHING"""
    )


def downgrade() -> None:
    op.execute(
        """
        DROP VIEW v_active_conversion_jobs; DROP VIEW v_provider_health; DROP VIEW v_buffer_status;
        DROP FUNCTION treasury_day_start(); DROP FUNCTION treasury_provider_stats_healthy(bigint, bigint);
        DROP FUNCTION treasury_buffer_status(bigint, bigint, bigint, bigint);
        DROP TABLE custodian_reports; DROP TABLE conversion_callback_nonces;
        DROP TABLE treasury_overrides;
        ALTER TABLE conversion_providers DROP COLUMN probe_healthy, DROP COLUMN probed_at,
            DROP COLUMN probe_error, DROP COLUMN callback_secret;
        ALTER TABLE conversion_attempts DROP COLUMN quotes, DROP COLUMN decision;
        DELETE FROM treasury_settings WHERE key IN ('timezone', 'conversions_frozen');
        """
    )
