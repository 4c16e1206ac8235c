"""``ballast alerts``, ``ballast analytics``, ``ballast guard`` and the balance report of
``ballast wallet show`` on the real database (CONTRACT.md shapes and exit codes)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from click.testing import CliRunner

from domain.guard import default_limits
from infra.cli.main import cli
from tests.harness import CLI_OPERATOR, uid  # --by is the operator whose key the CLI holds
from tests.infra.test_guard import apply, refused, set_tier


def run(*args, code=0):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == code, (result.output, result.exception)
    return result


def doc(*args):
    return json.loads(run(*args, "--json").output)


def test_alerts_list_ack_and_show(engine):
    user = uid()
    apply(engine, user, 50_000, "deposit")  # NGN 500.00: a balance warning
    listed = [a for a in doc("alerts", "--open") if a["subject"].startswith(user)]
    assert len(listed) == 1
    alert = listed[0]
    assert set(alert) == {"alert_id", "kind", "severity", "subject", "status", "created_at"}
    assert (alert["kind"], alert["severity"], alert["status"]) == ("balance_warning", "warning", "open")
    acked = doc("alerts", "ack", str(alert["alert_id"]), "--by", CLI_OPERATOR)
    assert acked["status"] == "acknowledged" and acked["acknowledged_by"] == CLI_OPERATOR
    assert acked["acknowledged_at"]
    again = run("alerts", "ack", str(alert["alert_id"]), "--by", CLI_OPERATOR, code=1)
    assert "acknowledged, not open" in again.output
    assert doc("alerts", "show", str(alert["alert_id"]))["data"]["user_id"] == user
    run("alerts", "ack", "999999999", "--by", CLI_OPERATOR, code=1)
    run("alerts", "ack", str(alert["alert_id"]), code=2)  # --by is required
    # Still open (acknowledged) until the balance recovers, then resolved.
    apply(engine, user, 50_000, "deposit")
    assert not [a for a in doc("alerts", "--open") if a["alert_id"] == alert["alert_id"]]
    assert [a["status"] for a in doc("alerts") if a["alert_id"] == alert["alert_id"]] == ["resolved"]


def test_wallet_show_is_the_balance_report(engine):
    user = uid()
    set_tier(engine, user, "gold")
    apply(engine, user, 2_000_000, "deposit", reason="bank", by="app")
    apply(engine, user, -1_950_000, "withdrawal", reason="to bank")
    rep = doc("wallet", "show", user)
    assert rep["tier"] == "gold" and rep["balances"] == {"NGN": 50_000}
    assert [(h["kind"], h["amount"], h["balance_before"], h["balance_after"]) for h in rep["history"]] == [
        ("withdrawal", -1_950_000, 2_000_000, 50_000), ("deposit", 2_000_000, 0, 2_000_000)]
    assert rep["history"][1]["reason"] == "bank" and rep["history"][1]["performed_by"] == "app"
    assert {a["kind"] for a in rep["alerts"]} == {"balance_warning", "significant_drop"}
    gold = default_limits("gold", "NGN")
    assert rep["limits"]["NGN"]["daily_used"] == 3_950_000
    assert rep["limits"]["NGN"]["daily_limit"] == gold.daily
    human = run("wallet", "show", user).output
    assert "gold" in human and "500.00 NGN" in human


def test_analytics_for_a_user_and_platform(engine):
    user = uid()
    apply(engine, user, 1_000_000, "deposit")
    apply(engine, user, -400_000, "withdrawal")
    one = doc("analytics", "--user", user, "--period", "daily")
    ngn = one["currencies"]["NGN"]
    assert (ngn["start_balance"], ngn["end_balance"], ngn["net_change"]) == (0, 600_000, 600_000)
    assert ngn["change_percent"] is None  # from zero: no percentage
    assert ngn["totals_by_type"] == {"deposit": 1_000_000, "withdrawal": -400_000}
    assert ngn["volatility"] == 300_000 and ngn["trend"] == "up"
    assert one["period"] == "daily" and one["user_id"] == user
    platform = doc("analytics", "--period", "weekly", "--currency", "NGN")
    assert platform["user_id"] is None and platform["currencies"]["NGN"]["changes"] >= 2
    # A custom window entirely before the changes sees a zero balance and no changes.
    early = (datetime.now(timezone.utc) - timedelta(days=400)).isoformat()
    earlier = (datetime.now(timezone.utc) - timedelta(days=401)).isoformat()
    old = doc("analytics", "--user", user, "--period", "custom", "--start", earlier, "--end", early)
    assert old["currencies"]["NGN"]["changes"] == 0 and old["currencies"]["NGN"]["end_balance"] == 0
    run("analytics", "--period", "custom", "--start", early, code=2)
    run("analytics", "--period", "custom", "--start", early, "--end", earlier, code=2)
    run("analytics", "--period", "hourly", code=2)
    assert "NGN" in run("analytics", "--user", user, "--period", "yearly").output


def test_guard_limits_can_be_read_and_changed(engine):
    rows = doc("guard", "limits", "--tier", "platinum", "--currency", "USD")
    assert rows == [{"tier": "platinum", "currency": "USD", "min_balance": -2_500_000,
                     "max_balance": 250_000_000, "daily_limit": 25_000_000,
                     "weekly_limit": 100_000_000, "warning": 100_000, "critical": 10_000}]
    user = uid()
    set_tier(engine, user, "platinum")
    try:
        changed = doc("guard", "set-limit", "platinum", "USD", "--daily", "700", "--by", CLI_OPERATOR)
        assert changed["daily_limit"] == 700 and changed["weekly_limit"] == 100_000_000
        apply(engine, user, 700, "deposit", "USD")
        assert refused(engine, user, 1, "deposit", "USD").rule == "daily_limit"
        run("guard", "set-limit", "platinum", "USD", "--by", CLI_OPERATOR, code=2)  # nothing to change
        run("guard", "set-limit", "platinum", "USD", "--warning", "1", "--by", CLI_OPERATOR, code=2)  # < critical
    finally:
        run("guard", "set-limit", "platinum", "USD", "--daily", "25000000", "--by", CLI_OPERATOR)
