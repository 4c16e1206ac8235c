"""Ledger account codes (SPEC §0), pure: the one module that builds and parses them.

Every account is ``{kind}:{...}``; the kinds and their parts:

=================  =================================  =========================================
kind               code                               what it is
=================  =================================  =========================================
``user``           ``user:{user_id}:{CUR}``           a user's wallet (a tiered credit line)
``world``          ``world:{CUR}``                    the outside of the platform (deposits in)
``adjustments``    ``adjustments:{CUR}``              the platform's side of corrections
``treasury``       ``treasury:{CUR}``                 the challenge treasury (fills, payouts)
``house``          ``house:{CUR}``                    market fees and breakage
``creator``        ``creator:{creator_id}:{CUR}``     a market creator's fee
``escrow``         ``escrow:{challenge|market}:{id}`` stakes held until settlement
``buffer``         ``buffer:{account_type}``          a treasury buffer (SPEC §3)
``transit``        ``transit:{CUR}``                  conversions on their way
``cycle``          ``cycle:{cycle_id}``               a payment-matching cycle's capital
``provider``       ``provider:{name}:{CUR}``          mirrors an external party
=================  =================================  =========================================

Identifiers never hold a colon (the contract's identifier pattern), so ``parse`` is exact.
Set-based SQL that builds a code from columns takes the prefix from here as a bound
parameter (``prefix(kind)``) instead of a literal of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

USER = "user"
WORLD = "world"
ADJUSTMENTS = "adjustments"
TREASURY = "treasury"
HOUSE = "house"
CREATOR = "creator"
ESCROW = "escrow"
BUFFER = "buffer"
TRANSIT = "transit"
CYCLE = "cycle"
PROVIDER = "provider"

#: The parts after the kind, in order.
PARTS: dict[str, tuple[str, ...]] = {
    USER: ("owner", "currency"),
    WORLD: ("currency",),
    ADJUSTMENTS: ("currency",),
    TREASURY: ("currency",),
    HOUSE: ("currency",),
    CREATOR: ("owner", "currency"),
    ESCROW: ("scope", "owner"),
    BUFFER: ("owner",),
    TRANSIT: ("currency",),
    CYCLE: ("owner",),
    PROVIDER: ("owner", "currency"),
}

#: What an escrow holds stakes for.
ESCROW_SCOPES = ("challenge", "market")


def prefix(kind: str) -> str:
    """``"user:"`` for ``"user"``: the start of every code of ``kind``."""
    if kind not in PARTS:
        raise ValueError(f"unknown account kind {kind!r}")
    return f"{kind}:"


def _code(kind: str, *parts: str) -> str:
    for part in parts:
        if not part or ":" in part:
            raise ValueError(f"an account code part cannot be empty or hold ':' ({part!r})")
    return ":".join((kind, *parts))


def user(user_id: str, currency: str) -> str:
    return _code(USER, user_id, currency)


def world(currency: str) -> str:
    return _code(WORLD, currency)


def adjustments(currency: str) -> str:
    return _code(ADJUSTMENTS, currency)


def treasury(currency: str) -> str:
    return _code(TREASURY, currency)


def house(currency: str) -> str:
    return _code(HOUSE, currency)


def creator(creator_id: str, currency: str) -> str:
    return _code(CREATOR, creator_id, currency)


def challenge_escrow(challenge_id: str) -> str:
    return _code(ESCROW, "challenge", challenge_id)


def market_escrow(market_id: str) -> str:
    return _code(ESCROW, "market", market_id)


def buffer(account_type: str) -> str:
    return _code(BUFFER, account_type)


def transit(currency: str) -> str:
    return _code(TRANSIT, currency)


def cycle(cycle_id: str) -> str:
    return _code(CYCLE, cycle_id)


def provider(name: str, currency: str) -> str:
    return _code(PROVIDER, name, currency)


@dataclass(frozen=True, slots=True)
class Account:
    """A parsed code: its kind and whichever parts its kind has."""

    kind: str
    owner: str | None = None  # user, creator, escrowed id, buffer type, cycle, provider
    currency: str | None = None
    scope: str | None = None  # escrow only: challenge or market

    @property
    def code(self) -> str:
        return _code(self.kind, *(getattr(self, p) for p in PARTS[self.kind]))


def parse(code: str) -> Account:
    """The parts of ``code``; ValueError when it is not an account code of a known kind."""
    kind, _, rest = code.partition(":")
    if kind not in PARTS:
        raise ValueError(f"not an account code: {code!r}")
    parts = rest.split(":")
    names = PARTS[kind]
    if len(parts) != len(names) or not all(parts):
        raise ValueError(f"{code!r}: a {kind} account is {kind}:{':'.join(names)}")
    account = Account(kind, **dict(zip(names, parts)))
    if kind == ESCROW and account.scope not in ESCROW_SCOPES:
        raise ValueError(f"{code!r}: an escrow is for one of {', '.join(ESCROW_SCOPES)}")
    return account


def owner_of_wallet(code: str) -> str | None:
    """The user of a wallet code, None for any other account."""
    account = parse(code)
    return account.owner if account.kind == USER else None
