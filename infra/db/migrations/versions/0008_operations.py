"""Operations: durable dead letters, the operator action log, retention indexes.

Revision ID: 0008
Revises: 0006
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- Every dead letter, recorded when it is dead-lettered: RabbitMQ may expire its copy
        -- (the XQ's x-message-ttl), this one stays.
        CREATE TABLE dead_letters (
            id bigserial PRIMARY KEY,
            message_id text NOT NULL,
            queue text NOT NULL,
            actor text,
            request_id text,
            code text,
            error text,
            reason text NOT NULL,
            traceback text,
            body jsonb NOT NULL,
            retries integer NOT NULL DEFAULT 0,
            -- how many times it had been replayed before this death (options.replays)
            replays integer NOT NULL DEFAULT 0,
            dead_lettered_at timestamptz NOT NULL DEFAULT now(),
            status text NOT NULL DEFAULT 'dead' CHECK (status IN ('dead', 'replayed', 'purged')),
            resolved_at timestamptz,
            resolved_by text,
            CHECK ((status = 'dead') = (resolved_at IS NULL))
        );
        -- One live record per message: a redelivered death updates it.
        CREATE UNIQUE INDEX dead_letters_live ON dead_letters (message_id) WHERE status = 'dead';
        CREATE INDEX dead_letters_when ON dead_letters (dead_lettered_at);
        CREATE INDEX dead_letters_queue ON dead_letters (queue, status);

        -- Who pulled which lever, when, with what.
        CREATE TABLE operator_actions (
            id bigserial PRIMARY KEY,
            at timestamptz NOT NULL DEFAULT now(),
            performed_by text NOT NULL CHECK (length(performed_by) BETWEEN 1 AND 128),
            command text NOT NULL,
            target text,
            detail jsonb NOT NULL DEFAULT '{}'::jsonb
        );
        CREATE INDEX operator_actions_at ON operator_actions (at);

        -- Retention prunes by age.
        CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
        CREATE INDEX processed_requests_created ON processed_requests (created_at);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX processed_requests_created; DROP INDEX outbox_published;
        DROP TABLE operator_actions; DROP TABLE dead_letters;
        """
    )
