"""The operations console: operators who log in, their audit trail, the console's own settings.

Revision ID: 0013
Revises: 0006
"""

from alembic import op

revision = "0013"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE console_operators (
            name text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.@-]{1,64}$'),
            role text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
            password_hash text NOT NULL,
            disabled boolean NOT NULL DEFAULT false,
            created_at timestamptz NOT NULL DEFAULT now(),
            password_changed_at timestamptz NOT NULL DEFAULT now()
        );

        -- Every login (good or bad) and every action taken from the console.
        CREATE TABLE console_audit (
            id bigserial PRIMARY KEY,
            at timestamptz NOT NULL DEFAULT now(),
            operator text,
            action text NOT NULL,
            outcome text NOT NULL CHECK (outcome IN ('ok', 'refused', 'failed')),
            detail jsonb NOT NULL DEFAULT '{}'::jsonb,
            remote_addr text
        );
        CREATE INDEX console_audit_operator ON console_audit (operator, id DESC);

        -- The console's own settings (the session signing key when none is configured).
        CREATE TABLE console_settings (
            key text PRIMARY KEY,
            value text NOT NULL
        );
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE console_settings; DROP TABLE console_audit; DROP TABLE console_operators;")
