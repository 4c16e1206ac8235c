"""Foundation tables (SQLAlchemy Core).  Capabilities add theirs in their own modules.

The schema itself is owned by the Alembic migrations; these definitions are
the query-side mirror and must match them.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("code", Text, nullable=False, unique=True),
    Column("currency", Text, nullable=False),
    Column("allow_negative", Boolean, nullable=False),
    Column("balance", BigInteger, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
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
    Column("kind", Text, nullable=False),  # 'message' | 'event'
    Column("destination", Text, nullable=False),  # queue name or exchange
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
)
