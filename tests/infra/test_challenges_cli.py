"""``ballast challenge show``, ``ballast treasury dashboard`` and ``ballast personas`` (CONTRACT.md)."""

from __future__ import annotations

import json

from click.testing import CliRunner
from sqlalchemy import text

from infra.cli.main import cli
from tests.harness import uid
from tests.infra import challenges_pipeline as p
from tests.infra.test_challenges import STAKE, join, open_challenge, set_treasury

SHOW_KEYS = {"challenge_id", "status", "stake", "currency", "yes_count", "no_count", "yes_total",
             "no_total", "gap", "imbalanced_side", "unmatched_yes", "unmatched_no", "match_rate",
             "treasury", "matches"}
DASHBOARD_KEYS = {"total_allocated", "total_matches", "active_challenges", "settlement_pending",
                  "net_pnl", "utilization_percent", "recent_settlements"}


def ballast(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_challenge_show_prints_the_contract_document(engine):
    set_treasury(engine, 100 * STAKE)
    cid = open_challenge(max_risk=2 * STAKE)
    user = join(cid, "YES")
    join(cid, "YES"), join(cid, "YES")
    p.run("fill_treasury", challenge_id=cid, side="YES", match_count=1, admin_id="adm")
    out = ballast("challenge", "show", cid, "--json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert SHOW_KEYS <= set(doc)
    assert {"max_risk", "allocated", "remaining", "filled_count"} <= set(doc["treasury"])
    assert (doc["yes_count"], doc["yes_total"], doc["gap"], doc["unmatched_yes"]) == (3, 3 * STAKE, 3 * STAKE, 2)
    assert doc["treasury"]["remaining"] == STAKE and doc["match_rate"] == 33
    (match,) = doc["matches"]
    assert set(match) >= {"user_id", "persona", "user_side", "treasury_staked", "status", "result",
                          "treasury_payout"}
    assert (match["user_id"], match["treasury_staked"], match["status"]) == (user, STAKE, "active")
    human = ballast("challenge", "show", cid)
    assert human.exit_code == 0 and "match rate 33%" in human.output


def test_challenge_show_of_an_unknown_challenge_exits_1_with_a_reason():
    out = CliRunner().invoke(cli, ["challenge", "show", "nope", "--json"])
    assert out.exit_code == 1
    assert "challenge nope does not exist" in out.output


def test_treasury_dashboard_prints_the_contract_document(engine):
    out = ballast("treasury", "dashboard", "--json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert DASHBOARD_KEYS <= set(doc)
    assert all(isinstance(doc[k], int) for k in DASHBOARD_KEYS - {"recent_settlements"})
    assert doc["currency"] == "NGN"
    assert ballast("treasury", "dashboard", "--currency", "XYZ").exit_code == 2


def test_personas_are_listed_and_added(engine):
    listed = json.loads(ballast("personas", "list", "--json").output)
    assert len(listed) >= 49
    code = uid("cli.")
    out = ballast("personas", "add", code, "--name", "Kola_plays", "--category", "casual", "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["code"] == code
    again = CliRunner().invoke(cli, ["personas", "add", code, "--name", "X", "--category", "casual"])
    assert again.exit_code == 2 and "already exists" in again.output
    assert len(json.loads(ballast("personas", "--json").output)) == len(listed) + 1
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM shadow_personas WHERE code = :c"), {"c": code})
