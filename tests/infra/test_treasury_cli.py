"""``ballast buffers|providers|conversions``: the documents of CONTRACT.md, exit codes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from domain import conversions as conv
from infra.cli.main import cli
from tests.harness import CLI_OPERATOR, uid  # --by is the operator whose key the CLI holds
from tests.infra.test_treasury_kit import job, reset, usd, usdc

pytestmark = pytest.mark.usefixtures("clean_queues")


def run(*args, code=0):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, (result.output, result.stderr if result.stderr_bytes else "")
    return json.loads(result.stdout) if code == 0 and "--json" in args else result


def test_buffers_view_is_the_contract_document(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(600_000))
    rows = {r["account_type"]: r for r in run("buffers", "--json")}
    assert set(rows) == {"system_buffer_usdc", "system_buffer_fiat", "broker_operational"}
    for r in rows.values():
        assert list(r) == ["account_type", "currency", "balance", "min", "target", "max", "status"]
    assert rows["system_buffer_usdc"] == {
        "account_type": "system_buffer_usdc", "currency": "USDC", "balance": usdc(5_000),
        "min": usdc(10_000), "target": usdc(50_000), "max": usdc(100_000), "status": "CRITICAL_LOW"}
    assert rows["system_buffer_fiat"]["status"] == "HEALTHY"
    assert rows["broker_operational"]["status"] == "OVER_CAPITALIZED"


def test_providers_add_pause_resume_and_list(engine):
    reset(engine)
    name = uid("cli")
    added = run("providers", "add", "--by", CLI_OPERATOR, name, "--type", "simulated", "--priority", "3", "--rate",
                "0.9990", "--fee-bps", "15", "--latency-polls", "2", "--fail-mode", "stick", "--json")
    assert (added["name"], added["type"], added["priority"], added["status"]) == (
        name, "simulated", 3, "active")
    assert added["config"] == {"rate_ppm": 999_000, "fee_bps": 15, "latency_polls": 2,
                               "fail_mode": "stick"}
    assert run("providers", "pause", name, "--by", CLI_OPERATOR, "--json")["status"] == "paused"
    assert run("providers", "resume", name, "--by", CLI_OPERATOR, "--json")["status"] == "active"
    assert run("providers", "set", name, "--fail-mode", "none", "--by", CLI_OPERATOR, "--yes", "--json")["config"]["fail_mode"] == "none"
    [row] = [r for r in run("providers", "--json") if r["name"] == name]
    # probe/probed_at extend the contract's document (no probe yet: says nothing)
    assert row == {"name": name, "status": "active", "priority": 3, "success_rate": None,
                   "daily_volume_used": 0, "healthy": True, "probe": None, "probed_at": None}
    run("providers", "add", "--by", CLI_OPERATOR, name, "--type", "simulated", "--priority", "1", code=1)  # exists
    run("providers", "add", "--by", CLI_OPERATOR, "bad:name", "--type", "simulated", "--priority", "1", code=2)
    run("providers", "add", "--by", CLI_OPERATOR, uid("h"), "--type", "http", "--priority", "1", code=2)  # no --url
    run("providers", "add", "--by", CLI_OPERATOR, uid("r"), "--type", "simulated", "--priority", "1", "--rate", "0.1234567",
        code=2)
    run("providers", "pause", "nobody", "--by", CLI_OPERATOR, code=1)


def test_rebalance_convert_poll_and_conversions_views(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    name = uid("cli")
    run("providers", "add", "--by", CLI_OPERATOR, name, "--type", "simulated", "--priority", "1", "--latency-polls", "0")
    assert run("buffers", "rebalance", "--by", CLI_OPERATOR, "--json") == {"jobs_created": 1}
    assert run("buffers", "rebalance", "--by", CLI_OPERATOR, "--json") == {"jobs_created": 0}  # one in flight
    [active] = run("conversions", "--active", "--json")
    assert list(active) == ["job_id", "direction", "source_amount", "destination_amount", "status",
                            "provider", "attempts", "created_at"]
    assert (active["direction"], active["source_amount"], active["status"]) == (
        "USD->USDC", usd(60_000), "pending")
    from tests.steps import submission
    submission.submit(active["job_id"], engine)
    assert run("conversions", "poll", "--json") == {"polled": 1}
    assert job(engine, active["job_id"]).status == conv.COMPLETED
    assert run("conversions", "--active", "--json") == []
    shown = run("conversions", "show", str(active["job_id"]), "--json")
    assert [t["to"] for t in shown["transitions"]] == ["pending", "provider_submitted", "completed"]

    manual = run("conversions", "convert", "--from", "broker_operational", "--to",
                 "system_buffer_usdc", "--amount", str(usd(1_000)), "--by", CLI_OPERATOR, "--json")
    assert (manual["kind"], manual["status"], manual["requested_by"]) == ("manual", "pending", CLI_OPERATOR)
    cancelled = run("conversions", "cancel", str(manual["job_id"]), "--by", CLI_OPERATOR, "--reason",
                    "changed my mind", "--json")
    assert cancelled["status"] == "cancelled"
    run("conversions", "convert", "--from", "broker_operational", "--to", "system_buffer_usdc",
        "--amount", str(usd(10**6)), "--by", CLI_OPERATOR, code=1)


def _auth_off(monkeypatch):
    """BALLAST_AUTH=off for the CLI: --by is then only the CLI's own rule (1-128 characters)."""
    from infra.cli import identity
    from infra.settings import get_settings

    off = get_settings().model_copy(update={"auth": "off"})
    monkeypatch.setattr(identity, "get_settings", lambda: off)


def test_rebalance_takes_every_by_the_cli_always_took(engine, monkeypatch):
    """The CLI checks --by itself, as before the cycle went through the contract: a name that
    is no contract identifier (a space, parentheses, 65-128 characters) still runs the cycle
    and is recorded on its job; blank or longer than 128 is still exit 2."""
    _auth_off(monkeypatch)
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    run("providers", "add", "--by", CLI_OPERATOR, uid("cli"), "--type", "simulated",
        "--priority", "1", "--latency-polls", "0")
    who = "Jane Doe (ops) " + "x" * 100
    assert run("buffers", "rebalance", "--by", who, "--json") == {"jobs_created": 1}
    [active] = run("conversions", "--active", "--json")
    assert job(engine, active["job_id"]).requested_by == who
    run("buffers", "rebalance", "--by", " ", code=2)
    run("buffers", "rebalance", "--by", "x" * 129, code=2)


def test_rebalance_and_its_audit_rows_are_one_transaction(engine, monkeypatch):
    """The cycle's jobs and the CLI's audit rows commit together or not at all."""
    from sqlalchemy import text

    from infra.treasury import overrides

    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    run("providers", "add", "--by", CLI_OPERATOR, uid("cli"), "--type", "simulated",
        "--priority", "1", "--latency-polls", "0")

    def audited() -> int:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM operator_actions "
                                     "WHERE command = 'buffers rebalance'")).scalar_one()

    before = audited()

    def broken(*args, **kwargs):
        raise RuntimeError("the audit row could not be written")

    monkeypatch.setattr(overrides, "record_lever", broken)
    with pytest.raises(RuntimeError):
        CliRunner().invoke(cli, ["buffers", "rebalance", "--by", CLI_OPERATOR, "--json"],
                           catch_exceptions=False)
    assert run("conversions", "--active", "--json") == []  # the cycle's job rolled back
    assert audited() == before  # and the operator_actions row written before it
    monkeypatch.undo()
    assert run("buffers", "rebalance", "--by", CLI_OPERATOR, "--json") == {"jobs_created": 1}
    assert audited() == before + 1


def test_pausing_auto_rebalancing(engine):
    reset(engine)
    assert run("buffers", "pause", "--by", CLI_OPERATOR, "--json") == {"auto_rebalance": False, "by": CLI_OPERATOR}
    assert run("buffers", "resume", "--by", CLI_OPERATOR, "--json")["auto_rebalance"] is True


def test_thresholds_are_configurable(engine):
    reset(engine)
    row = run("buffers", "set", "system_buffer_fiat", "--min", str(usd(30_000)), "--by", CLI_OPERATOR, "--yes",
              "--json")
    assert row["min"] == usd(30_000) and row["target"] == usd(100_000)
    run("buffers", "set", "system_buffer_fiat", "--min", str(usd(200_000)), "--by", CLI_OPERATOR, "--yes",
        code=2)


def test_human_tables_render(engine):
    reset(engine)
    for args in (["buffers"], ["providers"], ["conversions"]):
        assert run(*args).exit_code == 0


def test_providers_check_asks_the_provider(engine):
    from sqlalchemy import text
    reset(engine)
    name = uid("chk")
    run("providers", "add", "--by", CLI_OPERATOR, name, "--type", "simulated", "--priority", "1")
    assert run("providers", "check", name, "--json") == {"name": name, "reachable": True}
    with engine.begin() as conn:
        conn.execute(text("UPDATE conversion_providers SET config = jsonb_set(config, '{fail_mode}', "
                          "'\"error\"') WHERE name = :n"), {"n": name})
    assert run("providers", "check", name, code=1).stdout.strip() != ""
