"""Market payouts on PostgreSQL: the repository and the bulk settlement (SPEC §2)."""

from infra.markets import repository
from infra.markets.settlement import (
    BATCH,
    RolledBack,
    Settled,
    SettlementPending,
    escrow_account,
    failure_alert_key,
    record_failure,
    retry,
    roll_back,
    settle,
)

__all__ = ["repository", "settle", "roll_back", "escrow_account", "BATCH",
           "Settled", "RolledBack", "SettlementPending", "record_failure", "retry",
           "failure_alert_key"]
