"""Treasury balancing: challenges, participants, shadow personas, treasury fills and matches.

Revision ID: 0003
Revises: 0002
"""

from alembic import op
from sqlalchemy import text

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: The seeded shadow persona pool: 49 personas in four categories (more via the CLI).
PERSONAS: dict[str, list[str]] = {
    "big_stepper": ["Tunde", "Chioma", "Emeka", "Bisi", "Femi", "Ngozi", "Seyi", "Kunle",
                    "Amaka", "Dayo", "Ifeoma", "Segun", "Zainab"],
    "street_smart": ["Obinna", "Halima", "Kelechi", "Yemi", "Musa", "Funke", "Chidi", "Aisha",
                     "Gbenga", "Nneka", "Ibrahim", "Toyin"],
    "fanatic": ["Uche", "Kemi", "Sani", "Adaeze", "Wale", "Bola", "Ikenna", "Hauwa", "Jide",
                "Chinedu", "Lola", "Tobi"],
    "casual": ["Ada", "Bayo", "Efe", "Fola", "Ije", "Kayode", "Mide", "Nkem", "Ose", "Remi",
               "Sola", "Tari"],
}
_HANDLE = {"big_stepper": "stakes", "street_smart": "reads", "fanatic": "fc", "casual": "plays"}


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE challenges (
            id text PRIMARY KEY,
            title text NOT NULL,
            currency text NOT NULL,
            stake bigint NOT NULL CHECK (stake > 0),
            admin_created boolean NOT NULL,
            status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved', 'settled')),
            result text CHECK (result IN ('YES', 'NO', 'VOID')),
            resolved_by text,
            resolved_at timestamptz,
            settled_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT challenges_result_iff_resolved CHECK ((status = 'open') = (result IS NULL))
        );
        CREATE INDEX challenges_status ON challenges (status, settled_at);

        CREATE TABLE shadow_personas (
            id serial PRIMARY KEY,
            code text NOT NULL UNIQUE,
            display_name text NOT NULL,
            category text NOT NULL
                CHECK (category IN ('big_stepper', 'street_smart', 'fanatic', 'casual')),
            active boolean NOT NULL DEFAULT true,
            created_at timestamptz NOT NULL DEFAULT now()
        );

        CREATE TABLE challenge_participants (
            id bigserial PRIMARY KEY,                -- first come, first served
            challenge_id text NOT NULL REFERENCES challenges(id),
            user_id text NOT NULL,
            side text NOT NULL CHECK (side IN ('YES', 'NO')),
            stake bigint NOT NULL CHECK (stake > 0),
            join_transaction_id bigint NOT NULL REFERENCES ledger_transactions(id),
            paired_with bigint REFERENCES challenge_participants(id),
            treasury_match_id bigint,
            outcome text CHECK (outcome IN ('won', 'lost', 'refunded')),
            payout bigint CHECK (payout >= 0),
            settle_transaction_id bigint REFERENCES ledger_transactions(id),
            joined_at timestamptz NOT NULL DEFAULT now(),
            settled_at timestamptz,
            CONSTRAINT challenge_participants_one_join UNIQUE (challenge_id, user_id),
            CONSTRAINT challenge_participants_one_opponent
                CHECK (paired_with IS NULL OR treasury_match_id IS NULL),
            CONSTRAINT challenge_participants_settled
                CHECK ((settled_at IS NULL) = (outcome IS NULL))
        );
        CREATE UNIQUE INDEX challenge_participants_pair ON challenge_participants (paired_with);
        CREATE INDEX challenge_participants_waiting ON challenge_participants (challenge_id, side, id)
            WHERE paired_with IS NULL AND treasury_match_id IS NULL;
        CREATE INDEX challenge_participants_unsettled ON challenge_participants (challenge_id, id)
            WHERE settled_at IS NULL;

        CREATE TABLE challenge_treasury (
            challenge_id text PRIMARY KEY REFERENCES challenges(id),
            max_risk bigint NOT NULL CHECK (max_risk > 0),
            allocated bigint NOT NULL DEFAULT 0 CHECK (allocated >= 0),
            reserved bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
            filled_count integer NOT NULL DEFAULT 0 CHECK (filled_count >= 0),
            notes text NOT NULL DEFAULT '',
            configured_by text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            -- The database itself refuses a budget overrun, whatever the code does.
            CONSTRAINT challenge_treasury_within_max_risk CHECK (allocated + reserved <= max_risk)
        );

        -- Every configuration an admin made, with its notes.
        CREATE TABLE challenge_treasury_changes (
            id bigserial PRIMARY KEY,
            challenge_id text NOT NULL REFERENCES challenges(id),
            max_risk bigint NOT NULL,
            notes text NOT NULL,
            admin_id text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX challenge_treasury_changes_challenge ON challenge_treasury_changes (challenge_id, id);

        CREATE TABLE treasury_fills (
            id bigserial PRIMARY KEY,
            challenge_id text NOT NULL REFERENCES challenges(id),
            side text NOT NULL CHECK (side IN ('YES', 'NO')),
            requested integer NOT NULL CHECK (requested > 0),
            assigned integer,
            shortfall integer,
            shortfall_reasons text[] NOT NULL DEFAULT '{}',
            status text NOT NULL DEFAULT 'requested'
                CHECK (status IN ('requested', 'assigned', 'created', 'empty', 'failed', 'cancelled')),
            failure_reason text,
            admin_id text NOT NULL,
            request_id text NOT NULL,
            transaction_id bigint REFERENCES ledger_transactions(id),
            created_at timestamptz NOT NULL DEFAULT now(),
            assigned_at timestamptz,
            completed_at timestamptz
        );
        CREATE INDEX treasury_fills_challenge ON treasury_fills (challenge_id, id);
        CREATE INDEX treasury_fills_created_at ON treasury_fills (created_at);

        CREATE TABLE treasury_matches (
            id bigserial PRIMARY KEY,
            challenge_id text NOT NULL REFERENCES challenges(id),
            fill_id bigint NOT NULL REFERENCES treasury_fills(id),
            participant_id bigint NOT NULL REFERENCES challenge_participants(id),
            persona_id integer NOT NULL REFERENCES shadow_personas(id),
            user_id text NOT NULL,
            user_side text NOT NULL CHECK (user_side IN ('YES', 'NO')),
            stake bigint NOT NULL CHECK (stake > 0),
            status text NOT NULL DEFAULT 'reserved' CHECK (status IN ('reserved', 'active', 'settled')),
            result text CHECK (result IN ('treasury_won', 'treasury_lost', 'void')),
            treasury_payout bigint CHECK (treasury_payout >= 0),
            pnl bigint,
            created_at timestamptz NOT NULL DEFAULT now(),
            matched_at timestamptz,
            settled_at timestamptz,
            -- A persona is used at most once per challenge; a user has at most one persona.
            CONSTRAINT treasury_matches_persona_once UNIQUE (challenge_id, persona_id),
            CONSTRAINT treasury_matches_one_per_user UNIQUE (participant_id),
            CONSTRAINT treasury_matches_settled CHECK ((status = 'settled') = (result IS NOT NULL))
        );
        CREATE INDEX treasury_matches_fill ON treasury_matches (fill_id);
        CREATE INDEX treasury_matches_status ON treasury_matches (status, challenge_id);
        CREATE INDEX treasury_matches_matched_at ON treasury_matches (matched_at);
        CREATE INDEX treasury_matches_settled_at ON treasury_matches (settled_at);

        ALTER TABLE challenge_participants ADD CONSTRAINT challenge_participants_treasury_match
            FOREIGN KEY (treasury_match_id) REFERENCES treasury_matches(id);
        """
    )
    conn = op.get_bind()
    for category, names in PERSONAS.items():
        for name in names:
            conn.execute(
                text("INSERT INTO shadow_personas (code, display_name, category) "
                     "VALUES (:code, :display, :cat) ON CONFLICT (code) DO NOTHING"),
                {"code": f"{category}.{name.lower()}", "display": f"{name}_{_HANDLE[category]}",
                 "cat": category},
            )


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE challenge_participants DROP CONSTRAINT challenge_participants_treasury_match;
        DROP TABLE treasury_matches; DROP TABLE treasury_fills;
        DROP TABLE challenge_treasury_changes; DROP TABLE challenge_treasury;
        DROP TABLE challenge_participants; DROP TABLE shadow_personas; DROP TABLE challenges;
        """
    )
