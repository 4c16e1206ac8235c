"""Who may send what: producers, their public keys, the audit of changes, the auth log.

Revision ID: 0010
Revises: 0006
"""

from alembic import op

revision = "0010"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE producers (
            name text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.@-]{1,64}$'),
            roles text[] NOT NULL CHECK (cardinality(roles) > 0 AND roles <@ ARRAY[
                'wagering', 'funding', 'journal', 'operator', 'ballast']::text[]),
            created_at timestamptz NOT NULL DEFAULT now(),
            created_by text NOT NULL,
            revoked_at timestamptz,
            revoked_by text
        );

        -- Public keys only: the private part is printed once and never stored.
        CREATE TABLE producer_keys (
            key_id text PRIMARY KEY,
            producer text NOT NULL REFERENCES producers (name),
            algorithm text NOT NULL DEFAULT 'ed25519' CHECK (algorithm = 'ed25519'),
            public_key text NOT NULL UNIQUE,
            valid_from timestamptz NOT NULL DEFAULT now(),
            valid_until timestamptz,
            revoked_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            CHECK (valid_until IS NULL OR valid_until > valid_from)
        );
        CREATE INDEX producer_keys_producer ON producer_keys (producer);

        CREATE TABLE producer_audit (
            id bigserial PRIMARY KEY,
            producer text NOT NULL,
            action text NOT NULL CHECK (action IN ('add', 'rotate', 'revoke', 'revoke_key', 'init')),
            key_id text,
            performed_by text NOT NULL,
            detail jsonb NOT NULL DEFAULT '{}'::jsonb,
            at timestamptz NOT NULL DEFAULT now()
        );
        CREATE RULE producer_audit_no_update AS ON UPDATE TO producer_audit DO INSTEAD NOTHING;
        CREATE RULE producer_audit_no_delete AS ON DELETE TO producer_audit DO INSTEAD NOTHING;

        -- Every refusal, and every unsigned command let through in warn mode.
        CREATE TABLE auth_log (
            id bigserial PRIMARY KEY,
            producer text NOT NULL,
            actor text NOT NULL,
            rule text NOT NULL,
            outcome text NOT NULL CHECK (outcome IN ('refused', 'warned')),
            message_id text,
            at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX auth_log_producer_at ON auth_log (producer, at);
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE auth_log; DROP TABLE producer_audit; DROP TABLE producer_keys; "
               "DROP TABLE producers;")
