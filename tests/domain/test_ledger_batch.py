"""Batches and unlimited accounts, pure (domain/ledger.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import LedgerError
from domain.ledger import (
    NEGATIVE_ALLOWED_PREFIXES,
    Posting,
    PostingBatchItem,
    is_unlimited,
    may_go_negative,
    validate_batch,
)

codes = st.builds(lambda prefix, rest: prefix + rest,
                  st.sampled_from([*NEGATIVE_ALLOWED_PREFIXES, "treasury:", "house:", "escrow:",
                                   "buffer:", "cycle:", "creator:", ""]),
                  st.text(min_size=0, max_size=12))


@given(codes)
def test_an_unlimited_account_is_always_one_that_may_go_negative(code):
    assert not is_unlimited(code) or may_go_negative(code)


def test_only_the_outside_world_and_adjustments_are_unlimited():
    assert is_unlimited("world:NGN") and is_unlimited("adjustments:USD")
    # a wallet's credit line and the guard's limits read its balance: not unlimited
    assert not is_unlimited("user:42:NGN") and not is_unlimited("provider:x:NGN")
    assert not is_unlimited("treasury:NGN") and not is_unlimited("escrow:market:m1")


def item(amount: int, key: str | None = None) -> PostingBatchItem:
    return PostingBatchItem([Posting("world:NGN", "NGN", -amount), Posting("user:1:NGN", "NGN", amount)],
                            "test", idempotency_key=key)


def test_a_batch_names_the_transaction_that_does_not_balance():
    bad = PostingBatchItem([Posting("world:NGN", "NGN", -5), Posting("user:1:NGN", "NGN", 4)], "test")
    with pytest.raises(LedgerError, match="transaction 1 of the batch: transaction does not balance"):
        validate_batch([item(1), bad, item(2)])


@given(st.lists(st.integers(1, 10**9), min_size=1, max_size=20))
def test_a_batch_of_balanced_transactions_passes_whole_and_in_order(amounts):
    checked = validate_batch([item(a) for a in amounts])
    assert [postings[1].amount for _, postings in checked] == amounts


def test_a_batch_refuses_a_key_twice_and_an_empty_batch():
    with pytest.raises(LedgerError, match="twice in one batch"):
        validate_batch([item(1, "k"), item(2, "j"), item(3, "k")])
    assert len(validate_batch([item(1, None), item(2, None)])) == 2  # no key: no clash
    with pytest.raises(LedgerError, match="empty batch"):
        validate_batch([])
