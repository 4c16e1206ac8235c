"""Double-entry rules, pure (domain/ledger.py): postings, reversals, balance rules."""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from domain.errors import InsufficientFunds, LedgerError
from domain.ledger import (
    Posting,
    check_resulting_balance,
    may_go_negative,
    net_by_account,
    reversal_of,
    validate_postings,
)
from domain.money import CURRENCIES

accounts = st.sampled_from(
    ["world:NGN", "user:1:NGN", "user:2:USD", "treasury:USD", "escrow:challenge:7", "house:ISK"]
)
currencies = st.sampled_from(sorted(CURRENCIES))
nonzero = st.integers(-10**15, 10**15).filter(bool)


@st.composite
def balanced(draw) -> list[Posting]:
    """A balanced transaction: random lines, then one balancing line per currency."""
    lines = draw(st.lists(st.builds(Posting, accounts, currencies, nonzero), min_size=1, max_size=8))
    sums: dict[str, int] = defaultdict(int)
    for p in lines:
        sums[p.currency] += p.amount
    for cur, total in sums.items():
        if total:
            lines.append(Posting(draw(accounts), cur, -total))
    assume(len(lines) >= 2)
    return draw(st.permutations(lines))


def sums_by_currency(postings) -> dict[str, int]:
    sums: dict[str, int] = defaultdict(int)
    for p in postings:
        sums[p.currency] += p.amount
    return dict(sums)


@given(balanced())
def test_a_balanced_transaction_is_accepted_as_is(postings):
    assert validate_postings(iter(postings)) == postings


@given(balanced(), st.data())
def test_changing_any_amount_unbalances_the_transaction(postings, data):
    i = data.draw(st.integers(0, len(postings) - 1))
    delta = data.draw(nonzero)
    p = postings[i]
    broken = [*postings[:i], Posting(p.account, p.currency, p.amount + delta), *postings[i + 1:]]
    with pytest.raises(LedgerError):
        validate_postings(broken)


@given(balanced(), st.data())
def test_an_extra_line_unbalances_the_transaction(postings, data):
    extra = data.draw(st.builds(Posting, accounts, currencies, nonzero))
    with pytest.raises(LedgerError, match="does not balance"):
        validate_postings([*postings, extra])


@given(accounts, currencies, nonzero)
def test_a_transaction_needs_two_postings(account, currency, amount):
    with pytest.raises(LedgerError, match="at least two"):
        validate_postings([Posting(account, currency, amount)])
    with pytest.raises(LedgerError):
        validate_postings([])


@pytest.mark.parametrize(
    "bad, match",
    [
        (Posting("user:1:NGN", "NGN", 0), "zero amount"),
        (Posting("user:1:NGN", "NGN", 1.0), "not an integer"),
        (Posting("user:1:NGN", "NGN", True), "not an integer"),
        (Posting("user:1:NGN", "NGN", "1"), "not an integer"),
        (Posting("user:1:EUR", "EUR", 1), "unknown currency"),
        (Posting("", "NGN", 1), "bad account code"),
        (Posting("x" * 201, "NGN", 1), "bad account code"),
    ],
)
def test_a_malformed_line_is_refused(bad, match):
    counter = Posting("world:NGN", bad.currency, -1)
    with pytest.raises(LedgerError, match=match):
        validate_postings([counter, bad])


@given(balanced())
def test_a_reversal_balances_and_cancels_every_account(postings):
    undo = reversal_of(postings)
    assert validate_postings(undo) == undo
    net = net_by_account([*postings, *undo])
    assert set(net.values()) <= {0}
    assert {cur: -s for cur, s in sums_by_currency(postings).items()} == sums_by_currency(undo)
    assert reversal_of(undo) == postings


@given(st.lists(st.builds(Posting, accounts, currencies, nonzero), max_size=10))
def test_net_by_account_sums_each_accounts_lines(postings):
    net = net_by_account(postings)
    assert sum(net.values()) == sum(p.amount for p in postings)
    for code, total in net.items():
        assert total == sum(p.amount for p in postings if p.account == code)


@given(st.booleans(), st.integers(-10**15, 10**15), st.integers(-10**15, 10**15))
def test_only_accounts_that_may_go_negative_go_negative(allow_negative, balance, delta):
    if balance + delta < 0 and not allow_negative:
        with pytest.raises(InsufficientFunds, match=f"short by {-(balance + delta)}"):
            check_resulting_balance("treasury:NGN", allow_negative, balance, delta)
    else:
        assert check_resulting_balance("treasury:NGN", allow_negative, balance, delta) == balance + delta


@pytest.mark.parametrize(
    "code, allowed",
    [
        ("world:NGN", True),
        ("user:42:NGN", True),
        ("provider:acme:USDC", True),
        ("treasury:NGN", False),
        ("escrow:challenge:7", False),
        ("escrow:market:9", False),
        ("house:NGN", False),
        ("buffer:hot_wallet", False),
        ("worldly:NGN", False),
    ],
)
def test_which_accounts_may_go_negative(code, allowed):
    assert may_go_negative(code) is allowed
