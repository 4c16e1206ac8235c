"""Treasury-balancing alerts that clear without a message saying so (``evaluate_alerts``).

- ``treasury:underfunded:{CUR}`` clears once ``treasury:{CUR}`` could pay the fill that failed;
- ``treasury:budget:{challenge}`` once the challenge is settled or its budget funds a stake again;
- ``treasury:personas:{challenge}`` once it is settled or the pool has an unused persona again.
"""

from __future__ import annotations

from sqlalchemy import text

from infra import alerts


def treasury_balancing(uow) -> None:
    cleared = list(uow.conn.execute(text(
        "SELECT a.dedupe_key FROM alerts a JOIN accounts t "
        "ON t.code = 'treasury:' || substr(a.dedupe_key, length('treasury:underfunded:') + 1) "
        "WHERE a.status <> 'resolved' AND a.dedupe_key LIKE 'treasury:underfunded:%' "
        "AND t.balance >= COALESCE(CAST(a.data->>'amount' AS bigint), 0)")).scalars())
    cleared += uow.conn.execute(text(
        "SELECT a.dedupe_key FROM alerts a JOIN challenges c "
        "ON c.id = substr(a.dedupe_key, length('treasury:budget:') + 1) "
        "LEFT JOIN challenge_treasury t ON t.challenge_id = c.id "
        "WHERE a.status <> 'resolved' AND a.dedupe_key LIKE 'treasury:budget:%' "
        "AND (c.status <> 'open' OR t.max_risk - t.allocated - t.reserved >= c.stake)")).scalars()
    cleared += uow.conn.execute(text(
        "SELECT a.dedupe_key FROM alerts a JOIN challenges c "
        "ON c.id = substr(a.dedupe_key, length('treasury:personas:') + 1) "
        "WHERE a.status <> 'resolved' AND a.dedupe_key LIKE 'treasury:personas:%' "
        "AND (c.status <> 'open' OR EXISTS (SELECT 1 FROM shadow_personas p WHERE p.active "
        "AND NOT EXISTS (SELECT 1 FROM treasury_matches m "
        "WHERE m.challenge_id = c.id AND m.persona_id = p.id)))")).scalars()
    alerts.resolve_alerts(uow, cleared, note="condition cleared")
