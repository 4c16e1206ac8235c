"""Next-step request ids: deterministic, within the contract's bound, distinct per step."""

from hypothesis import given
from hypothesis import strategies as st

from domain import request_ids

parts = st.lists(st.one_of(st.text(min_size=1, max_size=90), st.integers(0, 10**12)),
                 min_size=1, max_size=5)


@given(parts)
def test_a_next_step_id_is_deterministic_and_within_the_bound(ps):
    rid = request_ids.next_step(*ps)
    assert rid == request_ids.next_step(*ps)
    assert 1 <= len(rid) <= request_ids.MAX_LENGTH


@given(parts, st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
def test_two_steps_of_one_parent_get_two_ids(ps, a, b):
    if a != b and ":" not in a + b:
        assert request_ids.next_step(*ps, a) != request_ids.next_step(*ps, b)


def test_short_ids_are_the_parts_joined():
    assert request_ids.next_step("conversion", 42, "poll", 3) == "conversion:42:poll:3"


def test_a_long_parent_is_digested_and_the_step_kept():
    rid = request_ids.next_step("x" * 128, "settle")
    assert rid.startswith("settle:") and len(rid) <= request_ids.MAX_LENGTH


def test_fresh_ids_differ():
    assert request_ids.fresh("webhook") != request_ids.fresh("webhook")
    assert request_ids.fresh("webhook").startswith("webhook:")
