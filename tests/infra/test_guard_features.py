"""Issue 14 on the balance guard and alerts, on the real database through the CLI:
``audit recent`` with keyset paging, ``wallet show --after``, ``analytics --agent`` and
``alerts resolve``."""

from __future__ import annotations

import json

from click.testing import CliRunner
from sqlalchemy import text

from infra.alerts import raise_alert
from infra.cli.main import cli
from infra.uow import UnitOfWork
from tests.harness import CLI_OPERATOR, uid
from tests.infra.test_guard import apply


def run(*args, code=0):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == code, (result.output, result.exception)
    return result


def doc(*args):
    return json.loads(run(*args, "--json").output)


def walk(*args, limit: int) -> list[list[dict]]:
    """Every page of ``audit recent`` (args + --limit), following next_cursor."""
    pages, after = [], []
    while True:
        page = doc("audit", "recent", *args, "--limit", str(limit), *after)
        pages.append(page["changes"])
        if page["next_cursor"] is None:
            return pages
        after = ["--after", page["next_cursor"]]


def test_audit_recent_pages_newest_first_without_repeats_or_gaps(engine):
    agent = uid("ops-")
    users = [uid() for _ in range(3)]
    for i in range(7):
        apply(engine, users[i % 3], 10_000 * (i + 1), "deposit", by=agent, reason=f"r{i}")
    apply(engine, users[0], 5_000, "deposit", by=uid("other-"))
    pages = walk("--by", agent, limit=3)
    assert [len(p) for p in pages] == [3, 3, 1]
    seen = [c for p in pages for c in p]
    assert [c["reason"] for c in seen] == [f"r{i}" for i in reversed(range(7))]  # newest first
    ids = [c["audit_id"] for c in seen]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 7
    assert {c["performed_by"] for c in seen} == {agent}
    assert seen[0]["user_id"] == users[6 % 3] and seen[0]["amount"] == 70_000
    # A change written while an operator walks the pages does not shift the pages after it.
    first = doc("audit", "recent", "--by", agent, "--limit", "3")
    apply(engine, users[1], 1_000, "deposit", by=agent, reason="late")
    second = doc("audit", "recent", "--by", agent, "--limit", "3", "--after", first["next_cursor"])
    assert [c["reason"] for c in second["changes"]] == ["r3", "r2", "r1"]


def test_audit_recent_filters_by_risk_and_refuses_a_bad_cursor(engine):
    agent = uid("ops-")
    user = uid()
    apply(engine, user, 100_000, "deposit", by=agent)  # into an empty wallet: large, risky
    apply(engine, user, 1_000, "deposit", by=agent)  # 1% of the balance: only the tier's +10
    risky = doc("audit", "recent", "--by", agent, "--min-risk", "50")["changes"]
    assert [c["amount"] for c in risky] == [100_000] and risky[0]["risk_score"] >= 50
    assert len(doc("audit", "recent", "--by", agent)["changes"]) == 2
    assert "not a page cursor" in run("audit", "recent", "--after", "abc", code=2).output
    human = run("audit", "recent", "--by", agent, "--limit", "1").output
    assert "--after" in human  # tells the operator how to get the next page


def test_wallet_show_pages_its_history(engine):
    user = uid()
    for i in range(5):
        apply(engine, user, 1_000 * (i + 1), "deposit", reason=f"d{i}")
    one = doc("wallet", "show", user, "--limit", "2")
    assert [h["reason"] for h in one["history"]] == ["d4", "d3"]
    two = doc("wallet", "show", user, "--limit", "2", "--after", one["history_next_cursor"])
    assert [h["reason"] for h in two["history"]] == ["d2", "d1"]
    three = doc("wallet", "show", user, "--limit", "2", "--after", two["history_next_cursor"])
    assert [h["reason"] for h in three["history"]] == ["d0"]
    assert three["history_next_cursor"] is None
    run("wallet", "show", user, "--after", "-3", code=2)


def test_analytics_per_agent(engine):
    agent = uid("svc-")
    a, b = uid(), uid()
    apply(engine, a, 300_000, "deposit", by=agent)
    apply(engine, b, 100_000, "deposit", by=agent)
    apply(engine, a, -100_000, "withdrawal", by=agent)
    apply(engine, a, 999_000, "deposit", by=uid("someone-else-"))
    got = doc("analytics", "--agent", agent, "--period", "daily")
    assert got["agent"] == agent
    ngn = got["currencies"]["NGN"]
    assert (ngn["changes"], ngn["users"], ngn["net_change"], ngn["volume"]) == (3, 2, 300_000, 500_000)
    assert ngn["totals_by_type"] == {"deposit": 400_000, "withdrawal": -100_000}
    # |changes| 300,000, 100,000, 100,000: population std-dev 94,280.9 → floored
    assert ngn["volatility"] == 94_280
    assert ngn["max_risk_score"] >= 50 and ngn["risky_changes"] >= 2
    assert doc("analytics", "--agent", uid("nobody-"), "--period", "daily")["currencies"] == {}
    run("analytics", "--agent", agent, "--user", a, "--period", "daily", code=2)
    assert agent in run("analytics", "--agent", agent, "--period", "weekly").output


def test_a_one_shot_alert_is_resolved_by_an_operator_with_a_note(engine):
    key = f"conversion:failed:{uid('job')}"
    with UnitOfWork(engine=engine) as uow:
        alert_id = raise_alert(uow, kind="conversion_failed", severity="critical",
                               subject="conversion failed", dedupe_key=key, data={})
        uow.commit()
    run("alerts", "resolve", str(alert_id), "--by", CLI_OPERATOR, code=2)  # --note is required
    got = doc("alerts", "resolve", str(alert_id), "--by", CLI_OPERATOR, "--note", "refunded by hand")
    assert (got["status"], got["resolved_by"], got["resolution_note"]) == \
        ("resolved", CLI_OPERATOR, "refunded by hand")
    assert got["resolved_at"]
    assert "already resolved" in run("alerts", "resolve", str(alert_id), "--by", CLI_OPERATOR, "--note", "y",
                                     code=1).output
    run("alerts", "resolve", "999999999", "--by", CLI_OPERATOR, "--note", "y", code=1)
    assert doc("alerts", "show", str(alert_id))["resolution_note"] == "refunded by hand"
    with engine.connect() as conn:
        body = conn.execute(text("SELECT body FROM outbox WHERE event_name = 'alert.resolved' "
                                 "AND CAST(body->'data'->>'alert_id' AS bigint) = :a"),
                            {"a": alert_id}).scalar_one()
    assert (body["data"]["note"], body["data"]["resolved_by"]) == ("refunded by hand", CLI_OPERATOR)
    # Resolved, the key may open again (the next failure is a new alert).
    with UnitOfWork(engine=engine) as uow:
        assert raise_alert(uow, kind="conversion_failed", severity="critical",
                           subject="failed again", dedupe_key=key, data={}) not in (None, alert_id)
        uow.commit()
