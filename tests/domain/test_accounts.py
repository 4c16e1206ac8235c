"""Account codes are built and parsed in one module (domain.accounts, issue 11)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from domain import accounts, buffers, challenges, ledger, wallet

ident = st.from_regex(r"[A-Za-z0-9_.@\-]{1,20}", fullmatch=True)  # the contract's identifiers
cur = st.sampled_from(["NGN", "USD", "USDC", "ISK", "TOKEN"])


@given(user=ident, currency=cur, other=ident)
def test_every_code_parses_back_to_its_parts(user, currency, other):
    built = {
        accounts.user(user, currency): ("user", user, currency, None),
        accounts.world(currency): ("world", None, currency, None),
        accounts.adjustments(currency): ("adjustments", None, currency, None),
        accounts.treasury(currency): ("treasury", None, currency, None),
        accounts.house(currency): ("house", None, currency, None),
        accounts.creator(other, currency): ("creator", other, currency, None),
        accounts.challenge_escrow(other): ("escrow", other, None, "challenge"),
        accounts.market_escrow(other): ("escrow", other, None, "market"),
        accounts.buffer(other): ("buffer", other, None, None),
        accounts.transit(currency): ("transit", None, currency, None),
        accounts.cycle(other): ("cycle", other, None, None),
        accounts.provider(other, currency): ("provider", other, currency, None),
    }
    for code, (kind, owner, currency_, scope) in built.items():
        a = accounts.parse(code)
        assert (a.kind, a.owner, a.currency, a.scope) == (kind, owner, currency_, scope)
        assert a.code == code and code.startswith(accounts.prefix(kind))
    assert accounts.owner_of_wallet(accounts.user(user, currency)) == user
    assert accounts.owner_of_wallet(accounts.world(currency)) is None


def test_the_capabilities_build_codes_through_it():
    assert wallet.wallet_account("u1", "NGN") == "user:u1:NGN"
    assert challenges.escrow_account("c1") == "escrow:challenge:c1"
    assert challenges.treasury_account("NGN") == "treasury:NGN"
    assert buffers.account_code("system_buffer_usdc") == "buffer:system_buffer_usdc"
    assert ledger.is_unlimited(accounts.world("NGN")) and ledger.is_unlimited(accounts.adjustments("ISK"))
    assert ledger.may_go_negative(accounts.user("u", "NGN"))
    assert not ledger.may_go_negative(accounts.treasury("NGN"))
    assert not ledger.may_go_negative(accounts.challenge_escrow("c"))


@pytest.mark.parametrize("code", ["", "user", "user:only", "user:a:b:c", "escrow:bet:1",
                                  "nosuch:NGN", "world:", "user::NGN"])
def test_a_malformed_code_is_refused(code):
    with pytest.raises(ValueError):
        accounts.parse(code)


def test_a_part_with_a_colon_cannot_make_a_code():
    with pytest.raises(ValueError):
        accounts.user("a:b", "NGN")
