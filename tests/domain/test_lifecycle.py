"""One lifecycle mechanism for every entity's status (domain.lifecycle, issue 11)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from domain import challenges, conversions, markets, matching
from domain.errors import Refused
from domain.lifecycle import IllegalTransition, Lifecycle, table

ALL = [challenges.CHALLENGE, challenges.MATCH, markets.MARKET, markets.DISTRIBUTION,
       markets.COMMITMENT, markets.DISPUTE, matching.CYCLE, matching.PARTICIPATION,
       conversions.JOB]


@pytest.mark.parametrize("life", ALL, ids=lambda l: l.entity)
def test_sources_are_exactly_the_statuses_allowed_to_move(life):
    for new in life.statuses:
        assert set(life.sources(new)) == {s for s in life.statuses if life.allows(s, new)}
    for current in life.terminal:
        for new in life.statuses:
            with pytest.raises(IllegalTransition):
                life.check(current, new)
    # Every status is reachable from the initial one.
    seen, todo = {life.initial}, [life.initial]
    while todo:
        for nxt in life.transitions[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(life.statuses)


@given(life=st.sampled_from(ALL), data=st.data())
def test_check_allows_what_the_table_says(life, data):
    current = data.draw(st.sampled_from(sorted(life.statuses)))
    new = data.draw(st.sampled_from(sorted(life.statuses)))
    if new in life.transitions[current]:
        assert life.check(current, new) == new
    else:
        with pytest.raises(Refused, match=f"cannot go from {current} to {new}"):
            life.check(current, new)


def test_the_conversion_job_keeps_its_words():
    with pytest.raises(Refused, match="a conversion job cannot go from completed to failed"):
        conversions.transition(conversions.COMPLETED, conversions.FAILED)


def test_a_table_naming_an_unknown_status_is_refused():
    with pytest.raises(ValueError):
        Lifecycle("x", "a", table(a=("b",)))
