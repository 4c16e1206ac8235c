"""Migration 0009 moves the settled treasury matches of void challenges to ``refunded``
(issue 14), on a scratch database migrated to 0006 first, then to head."""

from __future__ import annotations

import uuid

from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from infra.db.migrate import alembic_config, drop_database, ensure_database


def test_existing_void_matches_become_refunded_and_others_are_untouched(env):
    url = make_url(env.database_url).set(database=f"ballast_mig_{uuid.uuid4().hex[:8]}")
    url = url.render_as_string(hide_password=False)
    ensure_database(url)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0006")
            txn = conn.execute(text("INSERT INTO ledger_transactions (kind) VALUES ('t') "
                                    "RETURNING id")).scalar_one()
            for cid, result in (("void-c", "VOID"), ("won-c", "NO")):
                conn.execute(text("INSERT INTO challenges (id, title, currency, stake, admin_created, "
                                  "status, result) VALUES (:c, 't', 'NGN', 100, true, 'settled', :r)"),
                             {"c": cid, "r": result})
                fill = conn.execute(text("INSERT INTO treasury_fills (challenge_id, side, requested, "
                                         "admin_id, request_id) VALUES (:c, 'YES', 1, 'a', 'r') "
                                         "RETURNING id"), {"c": cid}).scalar_one()
                part = conn.execute(text("INSERT INTO challenge_participants (challenge_id, user_id, "
                                         "side, stake, join_transaction_id) VALUES (:c, 'u', 'YES', "
                                         "100, :t) RETURNING id"), {"c": cid, "t": txn}).scalar_one()
                conn.execute(text(
                    "INSERT INTO treasury_matches (challenge_id, fill_id, participant_id, persona_id, "
                    "user_id, user_side, stake, status, result, treasury_payout, pnl) VALUES "
                    "(:c, :f, :p, 1, 'u', 'YES', 100, 'settled', :res, :pay, :pnl)"),
                    {"c": cid, "f": fill, "p": part,
                     "res": "void" if result == "VOID" else "treasury_won",
                     "pay": 100 if result == "VOID" else 200, "pnl": 0 if result == "VOID" else 100})
            command.upgrade(cfg, "head")
            rows = {r.challenge_id: (r.status, r.result, int(r.treasury_payout), int(r.pnl))
                    for r in conn.execute(text("SELECT challenge_id, status, result, treasury_payout, "
                                               "pnl FROM treasury_matches"))}
        assert rows["void-c"] == ("refunded", None, 100, 0)
        assert rows["won-c"] == ("settled", "treasury_won", 200, 100)
    finally:
        engine.dispose()
        drop_database(url)
