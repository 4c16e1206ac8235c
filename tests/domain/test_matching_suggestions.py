"""Suggestions for payments without a usable memo, pure (issue 14)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from domain.matching import SUGGESTIONS_MAX, Candidate, suggest

candidates = st.lists(
    st.builds(Candidate, participation_id=st.text("abcdef", min_size=1, max_size=4),
              pledged=st.sampled_from([100, 200, 300]), at=st.integers(0, 10**6),
              known_payer=st.booleans()),
    max_size=30, unique_by=lambda c: c.participation_id)


@given(amount=st.sampled_from([100, 200, 999]), paid_at=st.integers(0, 10**6), cands=candidates)
def test_suggestions_are_ranked_and_need_a_reason(amount, paid_at, cands):
    got = suggest(amount, paid_at, cands)
    assert len(got) <= SUGGESTIONS_MAX
    by_id = {c.participation_id: c for c in cands}
    for s in got:
        c = by_id[s.participation_id]
        assert s.same_amount == (c.pledged == amount) and s.known_payer == c.known_payer
        assert s.reasons and s.seconds_apart == abs(paid_at - c.at)
    keys = [(-(s.same_amount + s.known_payer), not s.same_amount, not s.known_payer,
             s.seconds_apart, s.participation_id) for s in got]
    assert keys == sorted(keys)
    eligible = [c for c in cands if c.pledged == amount or c.known_payer]
    assert len(got) == min(SUGGESTIONS_MAX, len(eligible))
    # Nobody left out ranks above the last one shown.
    if got and len(eligible) > len(got):
        shown = {s.participation_id for s in got}
        worst = keys[-1]
        for c in eligible:
            if c.participation_id not in shown:
                sa, kp = c.pledged == amount, c.known_payer
                assert (-(sa + kp), not sa, not kp, abs(paid_at - c.at), c.participation_id) > worst


def test_both_reasons_beat_one_and_a_nearer_date_breaks_a_tie():
    got = suggest(100, 1_000, [Candidate("far", 100, 0), Candidate("near", 100, 990),
                               Candidate("both", 100, 0, known_payer=True),
                               Candidate("payer", 555, 1_000, known_payer=True),
                               Candidate("none", 555, 1_000)], limit=10)
    assert [s.participation_id for s in got] == ["both", "near", "far", "payer"]
