"""Treasury-balancing alerts that clear without a message saying so (``evaluate_alerts``).

- ``treasury:underfunded:{CUR}`` clears once ``treasury:{CUR}`` could pay the fill that failed;
- ``treasury:budget:{challenge}`` once the challenge is settled or its budget funds a stake
  again (``TreasuryConfig.funds``, decided in the domain over the rows read here);
- ``treasury:personas:{challenge}`` once it is settled or the pool has an unused persona again.

The keys' prefixes are the domain's (``domain.challenges``), bound as parameters.
"""

from __future__ import annotations

from sqlalchemy import text

from domain.accounts import TREASURY
from domain.challenges import BUDGET_ALERT, PERSONAS_ALERT, UNDERFUNDED_ALERT, TreasuryConfig
from infra import alerts


def treasury_balancing(uow) -> None:
    cleared = list(uow.conn.execute(text(
        "SELECT a.dedupe_key FROM alerts a JOIN accounts t "
        "ON t.code = :treasury || substr(a.dedupe_key, length(:p) + 1) "
        "WHERE a.status <> 'resolved' AND starts_with(a.dedupe_key, :p) "
        "AND t.balance >= COALESCE(CAST(a.data->>'amount' AS bigint), 0)"),
        {"p": UNDERFUNDED_ALERT, "treasury": TREASURY + ":"}).scalars())
    budgets = uow.conn.execute(text(
        "SELECT a.dedupe_key, c.status, c.stake, t.max_risk, t.allocated, t.reserved "
        "FROM alerts a JOIN challenges c ON c.id = substr(a.dedupe_key, length(:p) + 1) "
        "LEFT JOIN challenge_treasury t ON t.challenge_id = c.id "
        "WHERE a.status <> 'resolved' AND starts_with(a.dedupe_key, :p)"), {"p": BUDGET_ALERT})
    cleared += [r.dedupe_key for r in budgets if r.status != "open" or (
        r.max_risk is not None
        and TreasuryConfig(int(r.max_risk), int(r.allocated), int(r.reserved)).funds(int(r.stake)))]
    cleared += uow.conn.execute(text(
        "SELECT a.dedupe_key FROM alerts a JOIN challenges c "
        "ON c.id = substr(a.dedupe_key, length(:p) + 1) "
        "WHERE a.status <> 'resolved' AND starts_with(a.dedupe_key, :p) "
        "AND (c.status <> 'open' OR EXISTS (SELECT 1 FROM shadow_personas p WHERE p.active "
        "AND NOT EXISTS (SELECT 1 FROM treasury_matches m "
        "WHERE m.challenge_id = c.id AND m.persona_id = p.id)))"),
        {"p": PERSONAS_ALERT}).scalars()
    alerts.resolve_alerts(uow, cleared, note="condition cleared")
