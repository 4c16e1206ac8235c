"""Treasury balancing (SPEC §1), pure: challenges, imbalance, first-come pairing,
the treasury budget, fill planning, persona choice and settlement math.

A challenge has one ``stake`` per participant and two sides.  Real users are
paired across sides first-come-first-served; the heavy side's leftovers wait
until another user or a shadow persona (staked by the treasury) takes the
other side.  Amounts are integers in minor units.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal, Sequence, TypeVar

from domain import accounts
from domain.errors import Refused
from domain.lifecycle import Lifecycle, table
from domain.money import format_minor

Side = Literal["YES", "NO"]
Result = Literal["YES", "NO", "VOID"]
SIDES: tuple[str, str] = ("YES", "NO")
RESULTS: tuple[str, str, str] = ("YES", "NO", "VOID")

#: Persona categories of the seeded pool.
PERSONA_CATEGORIES: tuple[str, ...] = ("big_stepper", "street_smart", "fanatic", "casual")

#: Why a fill matched fewer users than asked (recorded and reported to admins).
SHORTFALL_BUDGET = "budget"
SHORTFALL_NO_USERS = "no_users"
SHORTFALL_PERSONAS = "personas_exhausted"

T = TypeVar("T")


def opposite(side: str) -> str:
    return "NO" if side == "YES" else "YES"


#: A challenge: open → resolved (result known) → settled (escrow paid out), or
#: settlement_failed when its settlement failed for good, resolved again for its retry.
CHALLENGE = Lifecycle("challenge", "open", table(
    open=("resolved",),
    resolved=("settled", "settlement_failed"),
    settlement_failed=("resolved", "settled"),
    settled=(),
))
#: A treasury match: reserved with its fill → active once its persona is paired → settled
#: (won or lost) or refunded (a void result).
MATCH = Lifecycle("treasury match", "reserved", table(
    reserved=("active",), active=("settled", "refunded"), settled=(), refunded=()))
#: The match statuses whose P&L is realized (settled won or lost, or refunded): the
#: dashboard's, the daily summary's and the settlement report's matches (bound in SQL).
MATCH_SETTLED: tuple[str, ...] = tuple(sorted(MATCH.terminal))
#: A VOID challenge's treasury match: its stake back, P&L 0.
MATCH_REFUNDED = "refunded"
#: A settled treasury match's ``result``.
TREASURY_WON = "treasury_won"
TREASURY_LOST = "treasury_lost"

#: Alert keys of treasury balancing (``… + id``); the alert sweep parses the id back by prefix.
BUDGET_ALERT = "treasury:budget:"
PERSONAS_ALERT = "treasury:personas:"
UNDERFUNDED_ALERT = "treasury:underfunded:"
SETTLEMENT_FAILED_ALERT = "challenge_settlement_failed:"


def budget_alert_key(challenge_id: str) -> str:
    """Open while a challenge's budget cannot fund one more stake."""
    return BUDGET_ALERT + challenge_id


def personas_alert_key(challenge_id: str) -> str:
    """Open while a challenge has no unused persona left for a fill."""
    return PERSONAS_ALERT + challenge_id


def underfunded_alert_key(currency: str) -> str:
    """Open while ``treasury:{CUR}`` could not pay a fill."""
    return UNDERFUNDED_ALERT + currency


def settlement_failed_alert_key(challenge_id: str) -> str:
    """Open while a challenge's settlement has failed for good."""
    return SETTLEMENT_FAILED_ALERT + challenge_id


def escrow_account(challenge_id: str) -> str:
    return accounts.challenge_escrow(challenge_id)


def treasury_account(currency: str) -> str:
    return accounts.treasury(currency)


@dataclass(frozen=True, slots=True)
class Challenge:
    """A challenge.

    Parameters:
      challenge_id: its id (part of the escrow account code).
      title: what it is about.
      currency: the currency of every stake.
      stake: minor units each participant (or the treasury, per match) puts in.
      admin_created: only admin challenges may be balanced by the treasury.
      status: ``open`` → ``resolved`` (result known) → ``settled`` (escrow paid out);
        ``settlement_failed`` when the settlement failed for good (retried by an operator).
      result: ``YES``, ``NO`` or ``VOID`` once resolved.
      closes_at: no join at or after this time (None: open until resolved).
      max_participants: no join beyond this many real participants (None: no cap).
    """

    challenge_id: str
    title: str
    currency: str
    stake: int
    admin_created: bool
    status: str = "open"
    result: str | None = None
    closes_at: datetime | None = None
    max_participants: int | None = None

    @property
    def terms(self) -> dict[str, object]:
        """What a resend of ``open_challenge`` must repeat (``domain.resends``)."""
        return {"title": self.title, "currency": self.currency, "stake": self.stake,
                "admin_created": self.admin_created, "closes_at": self.closes_at,
                "max_participants": self.max_participants}

    def same_terms(self, other: "Challenge") -> bool:
        return self.terms == other.terms

    def check_new(self, now: datetime) -> None:
        """A new challenge's limits make sense: it does not open already closed."""
        if self.closes_at is not None and self.closes_at <= now:
            raise Refused(f"challenge {self.challenge_id} would open already closed: closes_at "
                          f"{self.closes_at.isoformat()} is not after {now.isoformat()}")
        if self.max_participants is not None and self.max_participants < 1:
            raise Refused(f"challenge {self.challenge_id}: max_participants must be at least 1")

    def ensure_can_join(self, now: datetime, participants: int) -> None:
        """Refused after the close or at the cap (``participants``: real users joined so far)."""
        self.ensure_open("join")
        if self.closes_at is not None and now >= self.closes_at:
            raise Refused(f"cannot join: challenge {self.challenge_id} closed at "
                          f"{self.closes_at.isoformat()}")
        if self.max_participants is not None and participants >= self.max_participants:
            raise Refused(f"cannot join: challenge {self.challenge_id} is full "
                          f"({participants} of max_participants {self.max_participants})")

    def retry_settlement(self) -> "Challenge":
        """An operator retries a settlement that failed for good: it is resolved again."""
        if self.status != "settlement_failed":
            raise Refused(f"challenge {self.challenge_id} is {self.status}: only a "
                          "settlement_failed challenge is retried")
        return replace(self, status="resolved")

    def ensure_open(self, action: str) -> None:
        if self.status != "open":
            raise Refused(f"cannot {action}: challenge {self.challenge_id} is already {self.status}"
                          + (f" ({self.result})" if self.result else ""))

    def ensure_admin_created(self, action: str) -> None:
        if not self.admin_created:
            raise Refused(f"cannot {action}: challenge {self.challenge_id} is not admin-created; "
                          "the treasury only balances admin challenges")

    def resolve(self, result: str) -> "Challenge":
        if result not in RESULTS:
            raise Refused(f"unknown result {result!r}")
        self.ensure_open(f"resolve as {result}")
        return replace(self, status="resolved", result=result)


# --- imbalance ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SideTally:
    """Participants of one side: how many, their stakes, how many still wait."""

    count: int = 0
    total: int = 0
    unmatched: int = 0


@dataclass(frozen=True, slots=True)
class Imbalance:
    yes_count: int
    no_count: int
    yes_total: int
    no_total: int
    gap: int
    imbalanced_side: str | None
    unmatched_yes: int
    unmatched_no: int
    match_rate: int  # integer percent of real participants paired (user or persona)
    user_count: int = 0  # real participants, both sides
    potential_matches: int = 0  # pairs still possible between the sides' waiting users


def imbalance(yes: SideTally, no: SideTally) -> Imbalance:
    """The imbalance of a challenge from its two sides' tallies.

    ``potential_matches`` counts the user-vs-user pairs the waiting users of the two sides
    could still form (joins pair at once, so it is non-zero only while a join is in flight);
    what the treasury could still match is ``fillable``.
    """
    people = yes.count + no.count
    paired = people - yes.unmatched - no.unmatched
    if yes.total > no.total:
        heavy: str | None = "YES"
    elif no.total > yes.total:
        heavy = "NO"
    else:
        heavy = None
    return Imbalance(
        yes_count=yes.count, no_count=no.count, yes_total=yes.total, no_total=no.total,
        gap=abs(yes.total - no.total), imbalanced_side=heavy,
        unmatched_yes=yes.unmatched, unmatched_no=no.unmatched,
        match_rate=(paired * 100 // people) if people else 0,
        user_count=people,
        potential_matches=min(yes.unmatched, no.unmatched),
    )


def fillable(waiting_on_heavy: int, available: int, stake: int, unused_personas: int) -> int:
    """How many matches a fill could make now: waiting users, budget, personas (SPEC §1's n)."""
    if stake <= 0:
        return 0
    return max(0, min(waiting_on_heavy, max(available, 0) // stake, unused_personas))


def pair_first_come(yes_waiting: Sequence[T], no_waiting: Sequence[T]) -> list[tuple[T, T]]:
    """Pair the earliest waiting users of each side, in order (both lists oldest first)."""
    return list(zip(yes_waiting, no_waiting))


# --- the treasury budget --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TreasuryConfig:
    """The treasury's budget for one admin challenge.

    Parameters:
      max_risk: the most the treasury may stake on this challenge.
      allocated: staked so far (moved into the escrow by match creation).
      reserved: held by fills whose personas are assigned but not yet matched.
      filled_count: matches created.
      notes: the admin's notes.
    """

    max_risk: int
    allocated: int = 0
    reserved: int = 0
    filled_count: int = 0
    notes: str = ""

    @property
    def remaining(self) -> int:
        return self.max_risk - self.allocated

    @property
    def available(self) -> int:
        """What a new fill may still use: remaining minus what other fills hold."""
        return self.max_risk - self.allocated - self.reserved

    def reconfigure(self, max_risk: int, notes: str) -> "TreasuryConfig":
        committed = self.allocated + self.reserved
        if max_risk < committed:
            raise Refused(f"max_risk {max_risk} is below what the treasury already committed "
                          f"({self.allocated} allocated + {self.reserved} reserved)")
        return replace(self, max_risk=max_risk, notes=notes)

    def funds(self, stake: int) -> bool:
        """The budget can still fund one match (one stake)."""
        return self.available >= stake

    def ensure_can_fund(self, stake: int, challenge_id: str) -> None:
        if not self.funds(stake):
            raise Refused(f"treasury budget exhausted for challenge {challenge_id}: "
                          f"{self.available} available of max_risk {self.max_risk}, "
                          f"one match needs {stake}")

    def reserve(self, amount: int) -> "TreasuryConfig":
        if amount > self.available:
            raise Refused(f"cannot reserve {amount}: only {self.available} available")
        return replace(self, reserved=self.reserved + amount)

    def release(self, amount: int) -> "TreasuryConfig":
        return replace(self, reserved=self.reserved - amount)

    def allocate(self, amount: int, matches: int) -> "TreasuryConfig":
        """Reserved money became stakes in the escrow."""
        return replace(self, reserved=self.reserved - amount, allocated=self.allocated + amount,
                       filled_count=self.filled_count + matches)


# --- filling --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FillPlan:
    """Which users get which personas; how many fewer than asked and why."""

    pairs: tuple[tuple, ...]  # (user, persona), earliest user first
    requested: int
    shortfall: int
    reasons: tuple[str, ...]

    @property
    def n(self) -> int:
        return len(self.pairs)


def persona_order(challenge_id: str, personas: Sequence[T], key=lambda p: p) -> list[T]:
    """The challenge's own shuffle of the pool: random-looking, reproducible, and stable
    when personas are added (each persona's place depends only on the challenge and itself)."""

    def rank(p: T) -> str:
        return hashlib.sha256(f"{challenge_id}\x00{key(p)}".encode()).hexdigest()

    return sorted(personas, key=rank)


def plan_fill(
    *,
    challenge_id: str,
    match_count: int,
    waiting: Sequence[T],
    unused_personas: Sequence,
    available: int,
    stake: int,
    persona_key=lambda p: p,
) -> FillPlan:
    """n = min(match_count, waiting users, floor(available / stake), unused personas).

    ``waiting`` must hold the side's earliest unmatched users, oldest first (at
    least ``match_count`` of them when that many wait).  Every limit below
    ``match_count`` that binds is named in ``reasons``.
    """
    if match_count <= 0:
        raise Refused("match_count must be positive")
    if stake <= 0:
        raise Refused("stake must be positive")
    limits = {
        SHORTFALL_NO_USERS: len(waiting),
        SHORTFALL_BUDGET: max(available, 0) // stake,
        SHORTFALL_PERSONAS: len(unused_personas),
    }
    n = min(match_count, *limits.values())
    reasons = tuple(r for r, lim in limits.items() if lim == n and n < match_count)
    chosen = persona_order(challenge_id, unused_personas, persona_key)[:n]
    return FillPlan(pairs=tuple(zip(waiting[:n], chosen)), requested=match_count,
                    shortfall=match_count - n, reasons=reasons)


# --- settlement -----------------------------------------------------------------------

Opponent = Literal["user", "treasury"]


@dataclass(frozen=True, slots=True)
class UserSettlement:
    outcome: str  # won | lost | refunded
    payout: int  # credited to the user's wallet

    @property
    def change_kind(self) -> str:
        return "payout" if self.outcome == "won" else "refund"


@dataclass(frozen=True, slots=True)
class MatchSettlement:
    """How one treasury match ends: ``settled`` with a result, or ``refunded`` (VOID)."""

    result: str | None  # treasury_won | treasury_lost; None when refunded
    payout: int  # back to the treasury
    pnl: int  # +stake won, -stake lost, 0 refunded

    @property
    def status(self) -> str:
        return MATCH_REFUNDED if self.result is None else "settled"


def settle_user(*, stake: int, side: str, result: str, opponent: str | None) -> UserSettlement:
    """A paired user's winner takes both stakes; the unpaired and everyone on VOID get theirs back."""
    if result == "VOID" or opponent is None:
        return UserSettlement("refunded", stake)
    if side == result:
        return UserSettlement("won", 2 * stake)
    return UserSettlement("lost", 0)


def settle_treasury_match(*, stake: int, user_side: str, result: str) -> MatchSettlement:
    """The treasury held the side opposite the user's, one stake; VOID refunds it."""
    if result == "VOID":
        return MatchSettlement(None, stake, 0)
    if user_side == result:
        return MatchSettlement(TREASURY_LOST, 0, -stake)
    return MatchSettlement(TREASURY_WON, 2 * stake, stake)


@dataclass(frozen=True, slots=True)
class TreasuryOutcome:
    """The admins' summary of one settlement."""

    matches: int
    won: int
    lost: int
    refunded: int
    won_amount: int  # stakes taken from users
    lost_amount: int  # stakes lost to users
    refunded_amount: int
    payout: int  # what came back to the treasury
    net_pnl: int


def treasury_outcome(settled: Sequence[MatchSettlement], stake: int) -> TreasuryOutcome:
    won = [m for m in settled if m.result == TREASURY_WON]
    lost = [m for m in settled if m.result == TREASURY_LOST]
    void = [m for m in settled if m.status == MATCH_REFUNDED]
    return TreasuryOutcome(
        matches=len(settled), won=len(won), lost=len(lost), refunded=len(void),
        won_amount=stake * len(won), lost_amount=stake * len(lost),
        refunded_amount=stake * len(void),
        payout=sum(m.payout for m in settled), net_pnl=sum(m.pnl for m in settled),
    )


_SYMBOLS = {"NGN": "₦", "USD": "$"}


def format_amount(amount: int, currency: str) -> str:
    """``₦1,500.00`` for NGN and USD; ``1,500.000000 USDC`` otherwise.  Exact, no float."""
    text = format_minor(amount, currency)
    symbol = _SYMBOLS.get(currency)
    if symbol is None:
        return text
    number = text[: -len(currency) - 1]
    return f"-{symbol}{number[1:]}" if number.startswith("-") else f"{symbol}{number}"


def settlement_notice(outcome: UserSettlement, stake: int, currency: str) -> tuple[int, str]:
    """What the user is told: the amount credited when won, the stake when lost or refunded."""
    if outcome.outcome == "won":
        return outcome.payout, f"You won {format_amount(outcome.payout, currency)}"
    if outcome.outcome == "lost":
        return stake, f"You lost {format_amount(stake, currency)}"
    return outcome.payout, f"Your stake of {format_amount(outcome.payout, currency)} was refunded"


# --- what people are told (the original's lines, next to the data) ---------------------

def matched_message(opponent: str | None) -> str:
    """``match.found``: the persona's display name, or another player for a user pair."""
    return f"You've been matched with {opponent}" if opponent else "You've been matched with another player"


def filled_message(created: int, side: str) -> str:
    """``admin.treasury.match_created``."""
    return f"{created} {'match' if created == 1 else 'matches'} filled on {side}"


def signed_amount(amount: int, currency: str) -> str:
    """``+₦8,500.00``, ``-₦1,500.00``, ``₦0.00``."""
    return f"+{format_amount(amount, currency)}" if amount > 0 else format_amount(amount, currency)


def settlement_message(outcome: TreasuryOutcome, currency: str) -> str:
    """``admin.treasury.settlement``: ``Settlement: 12 won, 3 lost, +₦8,500.00``."""
    refunded = f", {outcome.refunded} refunded" if outcome.refunded else ""
    return (f"Settlement: {outcome.won} won, {outcome.lost} lost{refunded}, "
            f"{signed_amount(outcome.net_pnl, currency)}")
