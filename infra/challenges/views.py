"""Operator views of treasury balancing: ``challenge show`` and the dashboard (the daily
summary is the repository's: ``ChallengeRepository.daily_summary``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from domain.challenges import fillable, imbalance
from infra.challenges.repository import PNL_COLUMNS, PNL_PARAMS, ChallengeRepository

#: Settled challenges listed on the dashboard.
RECENT_SETTLEMENTS = 10


def show(conn: Connection, challenge_id: str, match_limit: int | None = None,
         match_offset: int = 0) -> dict[str, Any]:
    """The challenge, its imbalance, its treasury budget and its treasury matches
    (``match_limit``/``match_offset`` page the matches in SQL, as the console does)."""
    repo = ChallengeRepository(conn)
    challenge = repo.get(challenge_id)
    bal = imbalance(*repo.tallies(challenge_id))
    cfg = repo.config(challenge_id)
    extra = repo.settlement_state(challenge_id)
    heavy_waiting = {"YES": bal.unmatched_yes, "NO": bal.unmatched_no}.get(bal.imbalanced_side or "", 0)
    can_fill = fillable(heavy_waiting, cfg.available if cfg else 0, challenge.stake,
                        len(repo.unused_personas(challenge_id))) if cfg and challenge.status == "open" else 0
    matches = conn.execute(
        text("SELECT m.user_id, p.code AS persona, m.user_side, m.stake, m.status, m.result, "
             "m.treasury_payout, m.pnl FROM treasury_matches m "
             "JOIN shadow_personas p ON p.id = m.persona_id "
             "WHERE m.challenge_id = :c AND m.status <> 'reserved' ORDER BY m.participant_id "
             "LIMIT :n OFFSET :off"),
        {"c": challenge_id, "n": match_limit, "off": match_offset},
    )
    return {
        "challenge_id": challenge.challenge_id,
        "title": challenge.title,
        "admin_created": challenge.admin_created,
        "status": challenge.status,
        "result": challenge.result,
        "stake": challenge.stake,
        "currency": challenge.currency,
        "yes_count": bal.yes_count,
        "no_count": bal.no_count,
        "yes_total": bal.yes_total,
        "no_total": bal.no_total,
        "gap": bal.gap,
        "imbalanced_side": bal.imbalanced_side,
        "unmatched_yes": bal.unmatched_yes,
        "unmatched_no": bal.unmatched_no,
        "match_rate": bal.match_rate,
        "user_count": bal.user_count,
        "potential_matches": bal.potential_matches,
        "fillable": can_fill,
        "closes_at": challenge.closes_at.isoformat() if challenge.closes_at else None,
        "max_participants": challenge.max_participants,
        "settlement_failure": extra.settlement_failure,
        "settlement_failed_at": (extra.settlement_failed_at.isoformat()
                                 if extra.settlement_failed_at else None),
        "settlement_retries": int(extra.settlement_retries),
        "treasury": {
            "max_risk": cfg.max_risk if cfg else 0,
            "allocated": cfg.allocated if cfg else 0,
            "remaining": cfg.remaining if cfg else 0,
            "filled_count": cfg.filled_count if cfg else 0,
            "reserved": cfg.reserved if cfg else 0,
            "notes": cfg.notes if cfg else None,
        },
        "matches": [
            {"user_id": m.user_id, "persona": m.persona, "user_side": m.user_side,
             "treasury_staked": int(m.stake), "status": m.status, "result": m.result,
             "treasury_payout": None if m.treasury_payout is None else int(m.treasury_payout),
             "pnl": None if m.pnl is None else int(m.pnl)}
            for m in matches
        ],
    }


def dashboard(conn: Connection, currency: str) -> dict[str, Any]:
    """The treasury's position in one currency.

    ``total_allocated`` and ``utilization_percent`` are over active configs
    (challenges not yet settled); ``net_pnl`` is realized (settled matches).
    """
    active = conn.execute(
        text("SELECT count(*) AS n, COALESCE(sum(t.allocated), 0) AS allocated, "
             "COALESCE(sum(t.max_risk), 0) AS max_risk FROM challenge_treasury t "
             "JOIN challenges c ON c.id = t.challenge_id "
             "WHERE c.currency = :cur AND c.status <> 'settled'"),
        {"cur": currency},
    ).one()
    matches = conn.execute(
        text("SELECT count(*) FILTER (WHERE m.status = 'active' OR m.status = ANY(:settled)) "
             "AS total, count(*) FILTER (WHERE m.status = 'active') AS pending, "
             "COALESCE(sum(m.pnl) FILTER (WHERE m.status = ANY(:settled)), 0) AS pnl "
             "FROM treasury_matches m JOIN challenges c ON c.id = m.challenge_id "
             "WHERE c.currency = :cur"),
        {"cur": currency, **PNL_PARAMS},
    ).one()
    recent = conn.execute(
        text(f"SELECT c.id, c.result, c.settled_at, {PNL_COLUMNS} FROM challenges c "
             "JOIN treasury_matches m ON m.challenge_id = c.id AND m.status = ANY(:settled) "
             "WHERE c.currency = :cur AND c.status = 'settled' "
             "GROUP BY c.id ORDER BY c.settled_at DESC, c.id LIMIT :n"),
        {"cur": currency, "n": RECENT_SETTLEMENTS, **PNL_PARAMS},
    )
    currencies = conn.execute(
        text("SELECT DISTINCT c.currency FROM challenge_treasury t "
             "JOIN challenges c ON c.id = t.challenge_id ORDER BY 1")
    ).scalars().all()
    max_risk = int(active.max_risk)
    return {
        "currency": currency,
        "total_allocated": int(active.allocated),
        "total_matches": int(matches.total),
        "active_challenges": int(active.n),
        "settlement_pending": int(matches.pending),
        "net_pnl": int(matches.pnl),
        "utilization_percent": int(active.allocated) * 100 // max_risk if max_risk else 0,
        "recent_settlements": [
            {"challenge_id": r.id, "result": r.result, "settled_at": r.settled_at.isoformat(),
             "matches": int(r.matches), "won": int(r.won), "lost": int(r.lost),
             "refunded": int(r.refunded), "net_pnl": int(r.net_pnl)}
            for r in recent
        ],
        "currencies": list(currencies),
    }
