"""Foundation: ledger, idempotency, outbox, alerts.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE accounts (
            id bigserial PRIMARY KEY,
            code text NOT NULL UNIQUE,
            currency text NOT NULL,
            allow_negative boolean NOT NULL,
            balance bigint NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT accounts_no_forbidden_negative CHECK (allow_negative OR balance >= 0)
        );

        CREATE TABLE ledger_transactions (
            id bigserial PRIMARY KEY,
            idempotency_key text UNIQUE,
            kind text NOT NULL,
            memo text,
            reverses_id bigint UNIQUE REFERENCES ledger_transactions(id),
            metadata jsonb,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX ledger_transactions_created_at ON ledger_transactions (created_at);

        CREATE TABLE ledger_entries (
            id bigserial PRIMARY KEY,
            transaction_id bigint NOT NULL REFERENCES ledger_transactions(id),
            account_id bigint NOT NULL REFERENCES accounts(id),
            currency text NOT NULL,
            amount bigint NOT NULL CHECK (amount <> 0)
        );
        CREATE INDEX ledger_entries_transaction ON ledger_entries (transaction_id);
        CREATE INDEX ledger_entries_account ON ledger_entries (account_id, id);

        -- Entries are append-only: a mistake is corrected by a reversal.
        CREATE FUNCTION ledger_entries_append_only() RETURNS trigger AS $$
        BEGIN
            RAISE EXCEPTION 'ledger entries are append-only';
        END;
        $$ LANGUAGE plpgsql;
        CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE OR DELETE ON ledger_entries
            FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only();

        CREATE TABLE processed_requests (
            actor text NOT NULL,
            request_id text NOT NULL,
            payload_hash text NOT NULL,
            message_id text,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (actor, request_id)
        );

        CREATE TABLE outbox (
            id bigserial PRIMARY KEY,
            kind text NOT NULL CHECK (kind IN ('message', 'event')),
            destination text NOT NULL,
            routing_key text NOT NULL,
            event_name text,
            recipient text,
            body jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            published_at timestamptz,
            attempts integer NOT NULL DEFAULT 0,
            last_error text
        );
        CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
        CREATE INDEX outbox_event_name ON outbox (event_name, created_at) WHERE kind = 'event';

        CREATE TABLE alerts (
            id bigserial PRIMARY KEY,
            kind text NOT NULL,
            severity text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
            subject text NOT NULL,
            dedupe_key text NOT NULL,
            status text NOT NULL DEFAULT 'open'
                CHECK (status IN ('open', 'acknowledged', 'resolved')),
            data jsonb,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            acknowledged_by text,
            acknowledged_at timestamptz,
            resolved_at timestamptz
        );
        -- One open (or acknowledged) alert per dedupe key.
        CREATE UNIQUE INDEX alerts_one_open_per_key ON alerts (dedupe_key)
            WHERE status <> 'resolved';
        CREATE INDEX alerts_status ON alerts (status, created_at);
        """
    )
    # Reference accounts: the outside world, the treasury and the house per currency.
    for cur in ("NGN", "USD", "USDC", "ISK", "TOKEN"):
        op.execute(
            f"""
            INSERT INTO accounts (code, currency, allow_negative) VALUES
                ('world:{cur}', '{cur}', true),
                ('treasury:{cur}', '{cur}', false),
                ('house:{cur}', '{cur}', false)
            ON CONFLICT (code) DO NOTHING
            """
        )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE alerts; DROP TABLE outbox; DROP TABLE processed_requests;
        DROP TABLE ledger_entries; DROP FUNCTION ledger_entries_append_only();
        DROP TABLE ledger_transactions; DROP TABLE accounts;
        """
    )
