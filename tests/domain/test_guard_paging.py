"""Keyset paging and per-agent analytics, pure (issue 14)."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain import guard as rules
from domain.errors import InvalidCommand


@given(ids=st.lists(st.integers(1, 10**9), unique=True, max_size=80), limit=st.integers(1, 20))
def test_walking_the_pages_yields_every_row_once_newest_first(ids, limit):
    rows = sorted(ids, reverse=True)
    seen, after = [], None
    for _ in range(len(rows) + 2):
        window = [r for r in rows if after is None or r < after][: limit + 1]  # what SQL returns
        page, cursor = rules.page(window, limit, key=lambda r: r)
        seen += page
        if cursor is None:
            break
        after = rules.parse_cursor(cursor)
    assert seen == rows


@pytest.mark.parametrize("bad", ["", "abc", "-1", "0", "1.5", " 7"])
def test_a_cursor_is_a_positive_audit_id(bad):
    with pytest.raises(InvalidCommand, match="not a page cursor"):
        rules.parse_cursor(bad)
    assert rules.parse_cursor(None) is None and rules.parse_cursor("42") == 42


changes = st.lists(st.tuples(st.sampled_from(["deposit", "withdrawal", "adjustment", "payout"]),
                             st.integers(-10**9, 10**9).filter(bool)), max_size=60)


@given(changes=changes, users=st.integers(0, 50))
def test_agent_analytics_add_up(changes, users):
    stats = rules.ChangeStats.of(changes)
    got = rules.analyze_agent("NGN", stats, users, max_risk=0, risky=0)
    assert got["changes"] == len(changes)
    assert got["net_change"] == sum(a for _, a in changes) == sum(got["totals_by_type"].values())
    assert got["volume"] == sum(abs(a) for _, a in changes)
    if changes:
        exact = statistics.pstdev([abs(a) for _, a in changes])
        assert abs(got["volatility"] - exact) <= 1 + exact * 1e-9
    else:
        assert got["volatility"] == 0
    assert got["risk_level"] == rules.risk_level(got["volatility"], None, "NGN")
    assert got["trend"] == rules.trend(got["net_change"], "NGN")
