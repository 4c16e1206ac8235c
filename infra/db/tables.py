"""Every table of the schema, as SQLAlchemy Core ``Table`` objects: the one import point.

The schema is owned by the Alembic migrations (infra/db/migrations/versions); these
definitions are its query-side mirror, used by the repositories for ordinary reads and
writes.  tests/infra/test_tables.py migrates a database and holds them equal to it by
reflection (every table, every column's type and nullability, every primary key), so a
migration that adds a column fails there until the column is added here too.

Tables are grouped by the migration that created them; columns a later migration added
come last, in the order the database lists them.  CHECK constraints, partial indexes,
triggers, views and functions live in the migrations only.
"""

from __future__ import annotations

from typing import Iterable

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    any_,
    bindparam,
    cast,
    func,
    literal,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

metadata = MetaData()

# --- 0001: Foundation: ledger, idempotency, outbox, alerts.

accounts = Table(
    "accounts",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("code", Text, nullable=False, unique=True),
    Column("currency", Text, nullable=False),
    Column("allow_negative", Boolean, nullable=False),
    Column("balance", BigInteger, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("sharded", Boolean, nullable=False, server_default=text("false")),
)

ledger_transactions = Table(
    "ledger_transactions",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("idempotency_key", Text, unique=True),
    Column("kind", Text, nullable=False),
    Column("memo", Text),
    Column("reverses_id", BigInteger, ForeignKey("ledger_transactions.id"), unique=True),
    Column("metadata", JSONB),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("transaction_id", BigInteger, ForeignKey("ledger_transactions.id"), nullable=False),
    Column("account_id", BigInteger, ForeignKey("accounts.id"), nullable=False),
    Column("currency", Text, nullable=False),
    Column("amount", BigInteger, nullable=False),
)

processed_requests = Table(
    "processed_requests",
    metadata,
    Column("actor", Text, primary_key=True),
    Column("request_id", Text, primary_key=True),
    Column("payload_hash", Text, nullable=False),
    Column("message_id", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("destination", Text, nullable=False),
    Column("routing_key", Text, nullable=False),
    Column("event_name", Text),
    Column("recipient", Text),
    Column("body", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("published_at", DateTime(timezone=True)),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("severity", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("dedupe_key", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="open"),
    Column("data", JSONB),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("acknowledged_by", Text),
    Column("acknowledged_at", DateTime(timezone=True)),
    Column("resolved_at", DateTime(timezone=True)),
    Column("resolved_by", Text),
    Column("resolution_note", Text),
)


# --- 0002: Balance guard: tiers, configurable limits, the wallet audit trail, alert webhook …

user_tiers = Table(
    "user_tiers",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("tier", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

tier_changes = Table(
    "tier_changes",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("previous_tier", Text, nullable=False),
    Column("tier", Text, nullable=False),
    Column("request_id", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

guard_limits = Table(
    "guard_limits",
    metadata,
    Column("tier", Text, primary_key=True),
    Column("currency", Text, primary_key=True),
    Column("min_balance", BigInteger, nullable=False),
    Column("max_balance", BigInteger, nullable=False),
    Column("daily_limit", BigInteger, nullable=False),
    Column("weekly_limit", BigInteger, nullable=False),
    Column("warning_threshold", BigInteger, nullable=False),
    Column("critical_threshold", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_by", Text, nullable=False, server_default="migration"),
)

wallet_audit = Table(
    "wallet_audit",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("transaction_id", BigInteger, ForeignKey("ledger_transactions.id"), nullable=False),
    Column("user_id", Text, nullable=False),
    Column("currency", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("user_initiated", Boolean, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("balance_before", BigInteger, nullable=False),
    Column("balance_after", BigInteger, nullable=False),
    Column("reason", Text),
    Column("performed_by", Text),
    Column("metadata", JSONB),
    Column("risk_score", SmallInteger, nullable=False),
    Column("tier", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

alert_deliveries = Table(
    "alert_deliveries",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("alert_id", BigInteger, ForeignKey("alerts.id"), nullable=False),
    Column("event", Text, nullable=False),
    Column("body", JSONB, nullable=False),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("delivered_at", DateTime(timezone=True)),
)


# --- 0003: Treasury balancing: challenges, participants, shadow personas, treasury fills and …

challenges = Table(
    "challenges",
    metadata,
    Column("id", Text, primary_key=True),
    Column("title", Text, nullable=False),
    Column("currency", Text, nullable=False),
    Column("stake", BigInteger, nullable=False),
    Column("admin_created", Boolean, nullable=False),
    Column("status", Text, nullable=False, server_default="open"),
    Column("result", Text),
    Column("resolved_by", Text),
    Column("resolved_at", DateTime(timezone=True)),
    Column("settled_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("closes_at", DateTime(timezone=True)),
    Column("max_participants", Integer),
    Column("settlement_failure", Text),
    Column("settlement_failed_at", DateTime(timezone=True)),
    Column("settlement_retries", Integer, nullable=False, server_default="0"),
)

shadow_personas = Table(
    "shadow_personas",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("code", Text, nullable=False, unique=True),
    Column("display_name", Text, nullable=False),
    Column("category", Text, nullable=False),
    Column("active", Boolean, nullable=False, server_default=text("true")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

challenge_participants = Table(
    "challenge_participants",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("challenge_id", Text, ForeignKey("challenges.id"), nullable=False),
    Column("user_id", Text, nullable=False),
    Column("side", Text, nullable=False),
    Column("stake", BigInteger, nullable=False),
    Column("join_transaction_id", BigInteger, ForeignKey("ledger_transactions.id"), nullable=False),
    Column("paired_with", BigInteger, ForeignKey("challenge_participants.id")),
    Column("treasury_match_id", BigInteger, ForeignKey("treasury_matches.id", use_alter=True)),
    Column("outcome", Text),
    Column("payout", BigInteger),
    Column("settle_transaction_id", BigInteger, ForeignKey("ledger_transactions.id")),
    Column("joined_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("settled_at", DateTime(timezone=True)),
    UniqueConstraint("challenge_id", "user_id"),
)

challenge_treasury = Table(
    "challenge_treasury",
    metadata,
    Column("challenge_id", Text, ForeignKey("challenges.id"), primary_key=True),
    Column("max_risk", BigInteger, nullable=False),
    Column("allocated", BigInteger, nullable=False, server_default="0"),
    Column("reserved", BigInteger, nullable=False, server_default="0"),
    Column("filled_count", Integer, nullable=False, server_default="0"),
    Column("notes", Text, nullable=False, server_default=""),
    Column("configured_by", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

challenge_treasury_changes = Table(
    "challenge_treasury_changes",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("challenge_id", Text, ForeignKey("challenges.id"), nullable=False),
    Column("max_risk", BigInteger, nullable=False),
    Column("notes", Text, nullable=False),
    Column("admin_id", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

treasury_fills = Table(
    "treasury_fills",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("challenge_id", Text, ForeignKey("challenges.id"), nullable=False),
    Column("side", Text, nullable=False),
    Column("requested", Integer, nullable=False),
    Column("assigned", Integer),
    Column("shortfall", Integer),
    Column("shortfall_reasons", ARRAY(Text), nullable=False,
           server_default=text("'{}'::text[]")),
    Column("status", Text, nullable=False, server_default="requested"),
    Column("failure_reason", Text),
    Column("admin_id", Text, nullable=False),
    Column("request_id", Text, nullable=False),
    Column("transaction_id", BigInteger, ForeignKey("ledger_transactions.id")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("assigned_at", DateTime(timezone=True)),
    Column("completed_at", DateTime(timezone=True)),
)

treasury_matches = Table(
    "treasury_matches",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("challenge_id", Text, ForeignKey("challenges.id"), nullable=False),
    Column("fill_id", BigInteger, ForeignKey("treasury_fills.id"), nullable=False),
    Column("participant_id", BigInteger, ForeignKey("challenge_participants.id"), nullable=False,
           unique=True),
    Column("persona_id", Integer, ForeignKey("shadow_personas.id"), nullable=False),
    Column("user_id", Text, nullable=False),
    Column("user_side", Text, nullable=False),
    Column("stake", BigInteger, nullable=False),
    Column("status", Text, nullable=False, server_default="reserved"),
    Column("result", Text),
    Column("treasury_payout", BigInteger),
    Column("pnl", BigInteger),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("matched_at", DateTime(timezone=True)),
    Column("settled_at", DateTime(timezone=True)),
    UniqueConstraint("challenge_id", "persona_id"),
)


# --- 0004: Market payouts: markets, commitments, distributions.

markets = Table(
    "markets",
    metadata,
    Column("market_id", Text, primary_key=True),
    Column("title", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("currency", Text, nullable=False),
    Column("creator_id", Text, nullable=False),
    Column("creator_fee_bps", Integer, nullable=False),
    Column("house_fee_bps", Integer, nullable=False),
    Column("status", Text, nullable=False, server_default="open"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

market_options = Table(
    "market_options",
    metadata,
    Column("market_id", Text, ForeignKey("markets.market_id"), primary_key=True),
    Column("option_id", Text, primary_key=True),
    Column("label", Text, nullable=False),
    Column("ordinal", Integer, nullable=False),
    UniqueConstraint("market_id", "ordinal"),
)

market_commitments = Table(
    "market_commitments",
    metadata,
    Column("commitment_id", Text, primary_key=True),
    Column("market_id", Text, ForeignKey("markets.market_id"), nullable=False),
    Column("user_id", Text, nullable=False),
    Column("option_id", Text, nullable=False),
    Column("position", Text),
    Column("method", Text, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("status", Text, nullable=False, server_default="active"),
    Column("wallet_account_id", BigInteger, ForeignKey("accounts.id"), nullable=False),
    Column("transaction_id", BigInteger, ForeignKey("ledger_transactions.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    ForeignKeyConstraint(["market_id", "option_id"],
                         ["market_options.market_id", "market_options.option_id"]),
)

market_distributions = Table(
    "market_distributions",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("market_id", Text, ForeignKey("markets.market_id"), nullable=False),
    Column("kind", Text, nullable=False),
    Column("winning_option_id", Text),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("requested_by", Text, nullable=False),
    Column("reason", Text),
    Column("pool", BigInteger),
    Column("house_fee", BigInteger),
    Column("creator_fee", BigInteger),
    Column("winner_pool", BigInteger),
    Column("winning_total", BigInteger),
    Column("breakage", BigInteger),
    Column("paid", BigInteger),
    Column("commitments", Integer),
    Column("winners", Integer),
    Column("failure", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("completed_at", DateTime(timezone=True)),
    Column("rolled_back_at", DateTime(timezone=True)),
    Column("rolled_back_by", Text),
    Column("rollback_reason", Text),
    Column("retries", Integer, nullable=False, server_default="0"),
    Column("retried_by", Text),
    Column("retried_at", DateTime(timezone=True)),
)

market_distribution_lines = Table(
    "market_distribution_lines",
    metadata,
    Column("distribution_id", BigInteger, ForeignKey("market_distributions.id"), primary_key=True),
    Column("commitment_id", Text, ForeignKey("market_commitments.commitment_id"), primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("option_id", Text, nullable=False),
    Column("method", Text, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("result", Text, nullable=False),
    Column("share", Numeric, nullable=False),
    Column("payout", BigInteger, nullable=False),
    Column("profit", BigInteger, nullable=False),
)

market_distribution_transactions = Table(
    "market_distribution_transactions",
    metadata,
    Column("transaction_id", BigInteger, ForeignKey("ledger_transactions.id"), primary_key=True,
           autoincrement=False),
    Column("distribution_id", BigInteger, ForeignKey("market_distributions.id"), nullable=False),
    Column("purpose", Text, nullable=False),
    Column("reversal_id", BigInteger, ForeignKey("ledger_transactions.id")),
)


# --- 0005: Treasury engine: buffers, providers, conversion jobs.

treasury_buffers = Table(
    "treasury_buffers",
    metadata,
    Column("account_type", Text, primary_key=True),
    Column("currency", Text, nullable=False),
    Column("min_amount", BigInteger, nullable=False),
    Column("target_amount", BigInteger, nullable=False),
    Column("max_amount", BigInteger, nullable=False),
    Column("batch_amount", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_by", Text),
)

treasury_settings = Table(
    "treasury_settings",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", JSONB, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_by", Text),
)

conversion_providers = Table(
    "conversion_providers",
    metadata,
    Column("name", Text, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("status", Text, nullable=False, server_default="active"),
    Column("directions", ARRAY(Text), nullable=False,
           server_default=text("ARRAY['USD->USDC'::text, 'USDC->USD'::text]")),
    Column("min_amount", BigInteger, nullable=False, server_default="0"),
    Column("max_amount", BigInteger),
    Column("daily_limit", BigInteger),
    Column("config", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("success_count", BigInteger, nullable=False, server_default="0"),
    Column("failure_count", BigInteger, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("probe_healthy", Boolean),
    Column("probed_at", DateTime(timezone=True)),
    Column("probe_error", Text),
    Column("callback_secret", Text),
)

conversion_jobs = Table(
    "conversion_jobs",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("direction", Text, nullable=False),
    Column("source_account", Text, nullable=False),
    Column("destination_account", Text, nullable=False),
    Column("source_currency", Text, nullable=False),
    Column("destination_currency", Text, nullable=False),
    Column("source_amount", BigInteger, nullable=False),
    Column("destination_amount", BigInteger),
    Column("fee_amount", BigInteger),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("provider", Text, ForeignKey("conversion_providers.name")),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("transit_moved", Boolean, nullable=False, server_default=text("false")),
    Column("requested_by", Text, nullable=False),
    Column("trigger", Text, nullable=False),
    Column("failure_reason", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("submitted_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("stale_at", DateTime(timezone=True)),
)

conversion_job_transitions = Table(
    "conversion_job_transitions",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("job_id", BigInteger, ForeignKey("conversion_jobs.id"), nullable=False),
    Column("from_status", Text),
    Column("to_status", Text, nullable=False),
    Column("note", Text),
    Column("at", DateTime(timezone=True), nullable=False, server_default=text("clock_timestamp()")),
)

conversion_attempts = Table(
    "conversion_attempts",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("job_id", BigInteger, ForeignKey("conversion_jobs.id"), nullable=False),
    Column("attempt_no", Integer, nullable=False),
    Column("provider", Text, ForeignKey("conversion_providers.name"), nullable=False),
    Column("idempotency_key", Text, nullable=False, unique=True),
    Column("par_amount", BigInteger, nullable=False),
    Column("status", Text, nullable=False, server_default="submitting"),
    Column("provider_ref", Text),
    Column("error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("answered_at", DateTime(timezone=True)),
    Column("outcome_at", DateTime(timezone=True)),
    Column("quotes", JSONB),
    Column("decision", Text),
    UniqueConstraint("job_id", "attempt_no"),
)

simulated_provider_orders = Table(
    "simulated_provider_orders",
    metadata,
    Column("provider", Text, primary_key=True),
    Column("idempotency_key", Text, primary_key=True),
    Column("direction", Text, nullable=False),
    Column("source_amount", BigInteger, nullable=False),
    Column("destination_amount", BigInteger, nullable=False),
    Column("fee_amount", BigInteger, nullable=False),
    Column("rate_ppm", BigInteger, nullable=False),
    Column("state", Text, nullable=False, server_default="processing"),
    Column("polls", Integer, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


# --- 0006: Payment matching: characters, cycles, participations, wallet journal, payment links.

journal_characters = Table(
    "journal_characters",
    metadata,
    Column("character_id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("registered_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

journal_cycles = Table(
    "journal_cycles",
    metadata,
    Column("cycle_id", Text, primary_key=True),
    Column("status", Text, nullable=False, server_default="planned"),
    Column("initial_capital", BigInteger),
    Column("planned_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("opened_at", DateTime(timezone=True)),
    Column("closed_at", DateTime(timezone=True)),
    Column("closing_capital", BigInteger),
    Column("closed_by", Text),
)

journal_participations = Table(
    "journal_participations",
    metadata,
    Column("participation_id", Text, primary_key=True),
    Column("cycle_id", Text, ForeignKey("journal_cycles.cycle_id"), nullable=False),
    Column("user_id", Text, nullable=False),
    Column("character_name", Text, nullable=False),
    Column("memo", Text, nullable=False),
    Column("pledged", BigInteger, nullable=False),
    Column("amount", BigInteger, nullable=False, server_default="0"),
    Column("status", Text, nullable=False, server_default="AWAITING_INVESTMENT"),
    Column("payer_character_id", Text),
    Column("match_type", Text),
    Column("validated_at", DateTime(timezone=True)),
    Column("expired_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

journal_entries = Table(
    "journal_entries",
    metadata,
    Column("journal_id", Text, primary_key=True),
    Column("character_id", Text, nullable=False),
    Column("date", DateTime(timezone=True), nullable=False),
    Column("ref_type", Text, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("reason", Text, nullable=False, server_default=""),
    Column("first_party_id", Text, nullable=False),
    Column("second_party_id", Text, nullable=False),
    Column("imported_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("import_request_id", Text),
    Column("review_state", Text),
    Column("review_note", JSONB),
    Column("reviewed_at", DateTime(timezone=True)),
)

journal_payment_links = Table(
    "journal_payment_links",
    metadata,
    Column("journal_id", Text, ForeignKey("journal_entries.journal_id"), primary_key=True),
    Column("participation_id", Text, ForeignKey("journal_participations.participation_id"),
           nullable=False),
    Column("cycle_id", Text, ForeignKey("journal_cycles.cycle_id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("payer_character_id", Text, nullable=False),
    Column("match_type", Text, nullable=False),
    Column("score", Integer),
    Column("performed_by", Text, nullable=False),
    Column("request_id", Text, nullable=False),
    Column("ledger_transaction_id", BigInteger, ForeignKey("ledger_transactions.id")),
    Column("linked_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


# --- 0007: Treasury engine, complete: operator views, overrides, quotes, probes, callbacks, …

treasury_overrides = Table(
    "treasury_overrides",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("action", Text, nullable=False),
    Column("job_id", BigInteger, ForeignKey("conversion_jobs.id")),
    Column("performed_by", Text, nullable=False),
    Column("reason", Text),
    Column("evidence", Text),
    Column("data", JSONB),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

conversion_callback_nonces = Table(
    "conversion_callback_nonces",
    metadata,
    Column("provider", Text, primary_key=True),
    Column("nonce", Text, primary_key=True),
    Column("idempotency_key", Text),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

custodian_reports = Table(
    "custodian_reports",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("account_type", Text, ForeignKey("treasury_buffers.account_type"), nullable=False),
    Column("balance", BigInteger, nullable=False),
    Column("as_of", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("reported_by", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


# --- 0008: Operations: durable dead letters, the operator action log, retention indexes.

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("message_id", Text, nullable=False),
    Column("queue", Text, nullable=False),
    Column("actor", Text),
    Column("request_id", Text),
    Column("code", Text),
    Column("error", Text),
    Column("reason", Text, nullable=False),
    Column("traceback", Text),
    Column("body", JSONB, nullable=False),
    Column("retries", Integer, nullable=False, server_default="0"),
    Column("replays", Integer, nullable=False, server_default="0"),
    Column("dead_lettered_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("status", Text, nullable=False, server_default="dead"),
    Column("resolved_at", DateTime(timezone=True)),
    Column("resolved_by", Text),
)

operator_actions = Table(
    "operator_actions",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("performed_by", Text, nullable=False),
    Column("command", Text, nullable=False),
    Column("target", Text),
    Column("detail", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
)


# --- 0009: What the originals had (issue 14): challenge limits, refunded matches and failed

market_disputes = Table(
    "market_disputes",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("market_id", Text, ForeignKey("markets.market_id"), nullable=False),
    Column("distribution_id", BigInteger, ForeignKey("market_distributions.id"), nullable=False),
    Column("reason", Text, nullable=False),
    Column("disputed_by", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="open"),
    Column("ended_by", Text),
    Column("end_note", Text),
    Column("ended_at", DateTime(timezone=True)),
    Column("reresolved_distribution_id", BigInteger, ForeignKey("market_distributions.id")),
    Column("reresolved_outcome", Text),
    Column("reresolved_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


# --- 0010: Who may send what: producers, their public keys, the audit of changes, the auth log.

producers = Table(
    "producers",
    metadata,
    Column("name", Text, primary_key=True),
    Column("roles", ARRAY(Text), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("created_by", Text, nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Column("revoked_by", Text),
)

producer_keys = Table(
    "producer_keys",
    metadata,
    Column("key_id", Text, primary_key=True),
    Column("producer", Text, ForeignKey("producers.name"), nullable=False),
    Column("algorithm", Text, nullable=False, server_default="ed25519"),
    Column("public_key", Text, nullable=False, unique=True),
    Column("valid_from", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("valid_until", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

producer_audit = Table(
    "producer_audit",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("producer", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("key_id", Text),
    Column("performed_by", Text, nullable=False),
    Column("detail", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

auth_log = Table(
    "auth_log",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("producer", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("rule", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("message_id", Text),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


# --- 0012: Ledger speed: one round trip per posting (or per batch), sharded unlimited accounts.

account_shards = Table(
    "account_shards",
    metadata,
    Column("account_id", BigInteger, ForeignKey("accounts.id"), primary_key=True),
    Column("shard", SmallInteger, primary_key=True),
    Column("balance", BigInteger, nullable=False, server_default="0"),
)


# --- 0013: The operations console: operators who log in, their audit trail, the console's own …

console_operators = Table(
    "console_operators",
    metadata,
    Column("name", Text, primary_key=True),
    Column("role", Text, nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("disabled", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("password_changed_at", DateTime(timezone=True), nullable=False,
           server_default=func.now()),
)

console_audit = Table(
    "console_audit",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("operator", Text),
    Column("action", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("detail", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("remote_addr", Text),
)

console_settings = Table(
    "console_settings",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)


# --- helpers for statements on these tables -------------------------------------------


def jsonb(document: str) -> ColumnElement:
    """A JSON document the caller serialized (``json.dumps(..., default=str)``) as a jsonb
    value: the text is bound as text and cast by PostgreSQL, as ``CAST(:d AS jsonb)``."""
    return cast(literal(document, Text), JSONB)


def any_text(name: str, values: Iterable[str]) -> ColumnElement:
    """``ANY(:name)`` over a text array: one bound parameter however many values."""
    return any_(bindparam(name, list(values), type_=ARRAY(Text)))
