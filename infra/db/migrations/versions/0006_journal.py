"""Payment matching: characters, cycles, participations, wallet journal, payment links.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE journal_characters (
            character_id text PRIMARY KEY,
            name text NOT NULL,
            role text NOT NULL CHECK (role IN ('USER', 'LOGISTICS')),
            registered_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );

        CREATE TABLE journal_cycles (
            cycle_id text PRIMARY KEY,
            status text NOT NULL DEFAULT 'planned' CHECK (status IN ('planned', 'open', 'closed')),
            initial_capital bigint CHECK (initial_capital >= 0),
            planned_at timestamptz NOT NULL DEFAULT now(),
            opened_at timestamptz,
            closed_at timestamptz
        );

        CREATE TABLE journal_participations (
            participation_id text PRIMARY KEY,
            cycle_id text NOT NULL REFERENCES journal_cycles(cycle_id),
            user_id text NOT NULL,
            character_name text NOT NULL,
            memo text NOT NULL,
            pledged bigint NOT NULL CHECK (pledged > 0),
            -- what was received, the sum of the linked payments (ISK minor units)
            amount bigint NOT NULL DEFAULT 0 CHECK (amount >= 0),
            status text NOT NULL DEFAULT 'AWAITING_INVESTMENT'
                CHECK (status IN ('AWAITING_INVESTMENT', 'OPTED_IN', 'EXPIRED')),
            payer_character_id text,
            match_type text CHECK (match_type IN ('auto_exact', 'auto_contains', 'auto_fuzzy', 'manual')),
            validated_at timestamptz,
            expired_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            CHECK (status <> 'OPTED_IN' OR (validated_at IS NOT NULL AND amount > 0)),
            CHECK (status = 'OPTED_IN' OR amount = 0)
        );
        CREATE INDEX journal_participations_cycle ON journal_participations (cycle_id, status);

        CREATE TABLE journal_entries (
            journal_id text PRIMARY KEY,
            character_id text NOT NULL,
            date timestamptz NOT NULL,
            ref_type text NOT NULL,
            amount bigint NOT NULL,
            reason text NOT NULL DEFAULT '',
            first_party_id text NOT NULL,
            second_party_id text NOT NULL,
            imported_at timestamptz NOT NULL DEFAULT now(),
            import_request_id text,
            -- the last matching run's verdict on an unlinked payment, for review
            review_state text CHECK (review_state IN ('unmatched', 'ambiguous', 'linked')),
            review_note jsonb,
            reviewed_at timestamptz
        );
        CREATE INDEX journal_entries_donations ON journal_entries (character_id, date)
            WHERE ref_type = 'player_donation' AND amount > 0;

        -- One row per linked payment: the link and its audit (how, by whom, in which run).
        -- The primary key is the guarantee that a payment is linked at most once.
        CREATE TABLE journal_payment_links (
            journal_id text PRIMARY KEY REFERENCES journal_entries(journal_id),
            participation_id text NOT NULL REFERENCES journal_participations(participation_id),
            cycle_id text NOT NULL REFERENCES journal_cycles(cycle_id),
            amount bigint NOT NULL CHECK (amount > 0),
            payer_character_id text NOT NULL,
            match_type text NOT NULL
                CHECK (match_type IN ('auto_exact', 'auto_contains', 'auto_fuzzy', 'manual')),
            score integer,
            performed_by text NOT NULL,
            request_id text NOT NULL,
            ledger_transaction_id bigint REFERENCES ledger_transactions(id),
            linked_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX journal_payment_links_participation
            ON journal_payment_links (participation_id, linked_at);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE journal_payment_links; DROP TABLE journal_entries;
        DROP TABLE journal_participations; DROP TABLE journal_cycles; DROP TABLE journal_characters;
        """
    )
