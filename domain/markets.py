"""Market payouts, pure: markets, commitments and the parimutuel distribution (SPEC §2).

    market = Market.open("m1", "binary", ["yes-opt", "no-opt"], "NGN", "alice", 200)
    c = market.commit("c1", "bob", 1_000, option_id=None, position="yes")
    dist = distribute([c, ...], Outcome.winner("yes-opt"), market.house_fee_bps,
                      market.creator_fee_bps)

Everything is in integer minor units.  Fees are taken on the pool, each
winning commitment gets ``floor(amount × winner_pool / winning_total)`` and the
remainder of that floor (the *breakage*) goes to the house.  When nobody
committed to the winning option, or the market is voided, every commitment
is refunded in full and no fee is taken.

Large markets are settled in batches: ``terms`` is computed once from the
per-option totals, then ``line`` is applied to each commitment as it streams
past, and ``breakage`` closes the books from the sum of what was paid.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Literal, Mapping, Sequence

from domain.errors import InvalidCommand, LedgerError, Refused
from domain.lifecycle import Lifecycle, table

MarketKind = Literal["binary", "multi"]
Position = Literal["yes", "no"]
#: How a commitment's option was named: by ``option_id`` or by the legacy ``position``.
Method = Literal["option_id", "position"]

#: Basis points in one whole.
BPS = 10_000
DEFAULT_HOUSE_FEE_BPS = 500
CREATOR_FEE_MIN_BPS = 100
CREATOR_FEE_MAX_BPS = 500

#: Market statuses.  ``closed``: no new commitments, resolvable (after a rollback).
#: ``disputed``: a resolved market held while someone's dispute is looked at.
OPEN, SETTLING, SETTLED, VOIDED, CLOSED = "open", "settling", "settled", "voided", "closed"
DISPUTED = "disputed"
#: Distribution statuses (``pending`` while the settlement step has not run).
PENDING, COMPLETED, FAILED, ROLLED_BACK = "pending", "completed", "failed", "rolled_back"
#: How a dispute ends: the resolution confirmed (no money moves), or rolled back.
DISPUTE_OPEN, DISPUTE_CONFIRMED, DISPUTE_ROLLED_BACK = "open", "confirmed", "rolled_back"

#: A market: open → settling (resolved or voided) → settled | voided, or closed when its
#: settlement failed; a settled or voided market may be disputed (confirmed back to where it
#: was) or rolled back to closed; a closed market is resolved again (settling).
MARKET = Lifecycle("market", OPEN, table(
    open=(SETTLING,),
    settling=(SETTLED, VOIDED, CLOSED),
    settled=(DISPUTED, CLOSED),
    voided=(DISPUTED, CLOSED),
    disputed=(SETTLED, VOIDED, CLOSED),
    closed=(SETTLING,),
))
#: A distribution: pending → completed (paid) | failed; failed → pending (retried);
#: completed → rolled_back.
DISTRIBUTION = Lifecycle("distribution", PENDING, table(
    pending=(COMPLETED, FAILED),
    failed=(PENDING,),
    completed=(ROLLED_BACK,),
    rolled_back=(),
))
#: A commitment: active → settled by a distribution, back to active when it is rolled back.
COMMITMENT = Lifecycle("commitment", "active", table(active=("settled",), settled=("active",)))
DISPUTE = Lifecycle("dispute", DISPUTE_OPEN, table(
    open=(DISPUTE_CONFIRMED, DISPUTE_ROLLED_BACK), confirmed=(), rolled_back=()))


def status_after_settlement(distribution_kind: str) -> str:
    """A completed distribution leaves its market ``voided`` (void) or ``settled``."""
    return VOIDED if distribution_kind == "void" else SETTLED


def check_fees(creator_fee_bps: int, house_fee_bps: int) -> None:
    """The creator fee is 100–500 bps; fees together may not exceed the pool."""
    if not CREATOR_FEE_MIN_BPS <= creator_fee_bps <= CREATOR_FEE_MAX_BPS:
        raise Refused(
            f"creator fee {creator_fee_bps} bps is outside "
            f"{CREATOR_FEE_MIN_BPS}–{CREATOR_FEE_MAX_BPS} bps"
        )
    if not 0 <= house_fee_bps <= BPS - creator_fee_bps:
        raise Refused(
            f"house fee {house_fee_bps} bps with creator fee {creator_fee_bps} bps "
            f"exceeds {BPS} bps of the pool"
        )


@dataclass(frozen=True, slots=True)
class Commitment:
    """One wager on one option of a market.

    Parameters:
      commitment_id: the upstream id (unique).
      user_id: whose wallet paid it.
      option_id: the option it backs (resolved from a position when needed).
      amount: minor units moved from the wallet into the market escrow.
      method: how the option was named (``option_id`` or ``position``).
    """

    commitment_id: str
    user_id: str
    option_id: str
    amount: int
    method: Method = "option_id"


@dataclass(frozen=True, slots=True)
class Market:
    """A parimutuel market.

    Parameters:
      market_id: the upstream id.
      kind: ``binary`` (two options: yes = first, no = second) or ``multi``.
      options: option ids in their listed order.
      currency: of every commitment, payout and fee.
      creator_id: who earns the creator fee.
      creator_fee_bps: 100–500.
      house_fee_bps: default 500.
      status: see the module constants.
    """

    market_id: str
    kind: MarketKind
    options: tuple[str, ...]
    currency: str
    creator_id: str
    creator_fee_bps: int
    house_fee_bps: int = DEFAULT_HOUSE_FEE_BPS
    status: str = OPEN

    @classmethod
    def open(cls, market_id: str, kind: MarketKind, options: Sequence[str], currency: str,
             creator_id: str, creator_fee_bps: int,
             house_fee_bps: int = DEFAULT_HOUSE_FEE_BPS) -> "Market":
        """A new market, or Refused when its definition breaks a rule."""
        options = tuple(options)
        if len(set(options)) != len(options):
            raise Refused(f"market {market_id}: option ids must be unique")
        if kind == "binary" and len(options) != 2:
            raise Refused(f"market {market_id}: a binary market has exactly 2 options, "
                          f"got {len(options)}")
        if len(options) < 2:
            raise Refused(f"market {market_id}: a market needs at least 2 options")
        check_fees(creator_fee_bps, house_fee_bps)
        return cls(market_id, kind, options, currency, creator_id, creator_fee_bps,
                   house_fee_bps, OPEN)

    @property
    def position_options(self) -> dict[str, str]:
        """Legacy positions of a binary market: yes = first option, no = second."""
        if self.kind != "binary":
            return {}
        return {"yes": self.options[0], "no": self.options[1]}

    def option_for(self, option_id: str | None, position: str | None) -> tuple[str, Method]:
        """The option a commitment backs and how it was named.

        Both may be given; then they must agree.  Refused on a contradiction,
        an unknown option, or a position on a multi-option market.
        """
        if option_id is None and position is None:
            raise InvalidCommand("a commitment names an option_id, a position, or both")
        by_position = None
        if position is not None:
            if self.kind != "binary":
                raise Refused(f"market {self.market_id} is multi-option: position "
                              f"{position!r} does not apply, name an option_id")
            by_position = self.position_options[position]
        if option_id is not None:
            if option_id not in self.options:
                raise Refused(f"market {self.market_id} has no option {option_id!r}")
            if by_position is not None and by_position != option_id:
                raise Refused(f"option_id {option_id!r} contradicts position {position!r} "
                              f"(which is option {by_position!r})")
            return option_id, "option_id"
        assert by_position is not None
        return by_position, "position"

    def commit(self, commitment_id: str, user_id: str, amount: int, *,
               option_id: str | None = None, position: str | None = None) -> Commitment:
        """A new commitment on this open market."""
        if self.status != OPEN:
            raise Refused(f"market {self.market_id} is {self.status}: it takes no commitments")
        if type(amount) is not int or amount <= 0:
            raise InvalidCommand(f"amount must be a positive integer, got {amount!r}")
        chosen, method = self.option_for(option_id, position)
        return Commitment(commitment_id, user_id, chosen, amount, method)

    def check_disputable(self) -> None:
        """Refused unless the market is resolved (settled or voided) and not disputed now."""
        if self.status == DISPUTED:
            raise Refused(f"market {self.market_id} is already disputed: confirm it or roll it "
                          "back first")
        if self.status not in (SETTLED, VOIDED):
            raise Refused(f"market {self.market_id} is {self.status}: only a resolved (settled "
                          "or voided) market can be disputed")

    def check_confirmable(self) -> None:
        if self.status != DISPUTED:
            raise Refused(f"market {self.market_id} is {self.status}, not disputed: "
                          "nothing to confirm")

    def check_retryable(self, distribution_status: str) -> None:
        """Only a ``failed`` latest distribution of a ``closed`` market is retried."""
        if distribution_status != FAILED or self.status != CLOSED:
            raise Refused(f"market {self.market_id} is {self.status} and its latest distribution "
                          f"is {distribution_status}: only a failed settlement is retried")

    def check_resolvable(self, winning_option_id: str | None) -> None:
        """Refused unless the market can be resolved (or voided, with None) now."""
        if self.status not in (OPEN, CLOSED):
            raise Refused(f"market {self.market_id} is {self.status}: roll it back before "
                          "resolving it again")
        if winning_option_id is not None and winning_option_id not in self.options:
            raise Refused(f"market {self.market_id} has no option {winning_option_id!r}")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a resolution decided: a winning option, or void (``winning_option_id`` None)."""

    winning_option_id: str | None

    @classmethod
    def winner(cls, option_id: str) -> "Outcome":
        return cls(option_id)

    @classmethod
    def void(cls) -> "Outcome":
        return cls(None)


@dataclass(frozen=True, slots=True)
class Terms:
    """The numbers of one distribution, fixed before any commitment is paid.

    Parameters:
      kind: ``resolved`` (winners paid), ``refunded`` (nobody on the winning
        option: everyone refunded) or ``void`` (voided: everyone refunded).
      winning_option_id: None when void.
      pool: Σ of every commitment.
      house_fee, creator_fee: taken on the pool (0 when refunding).
      winner_pool: what is shared among the winners (the pool when refunding).
      winning_total: Σ of the winning commitments (the pool when refunding).
    """

    kind: Literal["resolved", "refunded", "void"]
    winning_option_id: str | None
    pool: int
    house_fee: int
    creator_fee: int
    winner_pool: int
    winning_total: int

    @property
    def refunding(self) -> bool:
        return self.kind != "resolved"

    def pays(self, option_id: str) -> bool:
        return self.refunding or option_id == self.winning_option_id


def terms(totals_by_option: Mapping[str, int], outcome: Outcome, house_fee_bps: int,
          creator_fee_bps: int) -> Terms:
    """Fees and pools of a distribution from the per-option totals of its commitments."""
    if any(type(v) is not int or v < 0 for v in totals_by_option.values()):
        raise LedgerError("option totals must be non-negative integers")
    if house_fee_bps < 0 or creator_fee_bps < 0 or house_fee_bps + creator_fee_bps > BPS:
        raise LedgerError(f"fees {house_fee_bps}+{creator_fee_bps} bps exceed the pool")
    pool = sum(totals_by_option.values())
    winning = outcome.winning_option_id
    if winning is None:
        return Terms("void", None, pool, 0, 0, pool, pool)
    winning_total = totals_by_option.get(winning, 0)
    if winning_total == 0:
        return Terms("refunded", winning, pool, 0, 0, pool, pool)
    house_fee = pool * house_fee_bps // BPS
    creator_fee = pool * creator_fee_bps // BPS
    return Terms("resolved", winning, pool, house_fee, creator_fee,
                 pool - house_fee - creator_fee, winning_total)


@dataclass(frozen=True, slots=True)
class Line:
    """The audit line of one commitment in a distribution.

    Parameters:
      commitment: the commitment it pays (or not).
      result: ``won``, ``lost`` or ``refunded``.
      share: the commitment's exact fraction of what is shared
        (``amount / winning_total``; 0 for a loser).
      payout: minor units credited to the wallet (floor of share × winner pool).
      profit: payout − amount (negative: a loss).
    """

    commitment: Commitment
    result: Literal["won", "lost", "refunded"]
    share: Fraction
    payout: int
    profit: int


def line(t: Terms, c: Commitment) -> Line:
    """What one commitment receives under ``t``."""
    if t.refunding:
        return Line(c, "refunded", Fraction(c.amount, t.pool), c.amount, 0)
    if c.option_id != t.winning_option_id:
        return Line(c, "lost", Fraction(0), 0, -c.amount)
    share = Fraction(c.amount, t.winning_total)
    payout = c.amount * t.winner_pool // t.winning_total
    return Line(c, "won", share, payout, payout - c.amount)


def breakage(t: Terms, paid: int) -> int:
    """What the floors left over, for the house: ``winner_pool − Σ payouts``.

    Raises LedgerError when ``paid`` cannot be the sum of this distribution's
    payouts (more than the winner pool).
    """
    left = t.winner_pool - paid
    if left < 0:
        raise LedgerError(f"payouts {paid} exceed the winner pool {t.winner_pool}")
    if t.refunding and left != 0:
        raise LedgerError(f"a refund must return the whole pool: {left} left over")
    return left


@dataclass(frozen=True, slots=True)
class Distribution:
    """A whole distribution: its terms, every line, and the breakage."""

    terms: Terms
    lines: tuple[Line, ...]
    breakage: int

    @property
    def paid(self) -> int:
        return sum(ln.payout for ln in self.lines)

    def payouts_by_user(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for ln in self.lines:
            if ln.payout:
                out[ln.commitment.user_id] = out.get(ln.commitment.user_id, 0) + ln.payout
        return out


def distribute(commitments: Iterable[Commitment], outcome: Outcome, house_fee_bps: int,
               creator_fee_bps: int) -> Distribution:
    """The full distribution of a market held in memory (small markets, tests)."""
    commitments = list(commitments)
    totals: dict[str, int] = {}
    for c in commitments:
        totals[c.option_id] = totals.get(c.option_id, 0) + c.amount
    t = terms(totals, outcome, house_fee_bps, creator_fee_bps)
    lines = tuple(line(t, c) for c in commitments)
    return Distribution(t, lines, breakage(t, sum(ln.payout for ln in lines)))
