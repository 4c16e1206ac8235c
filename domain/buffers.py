"""Currency buffers: thresholds, status, and how much a replenishment should convert.

Pure rules (SPEC §3).  Amounts are integers in minor units of the buffer's
currency; conversions between USD and USDC for *sizing* are at par (one
dollar = one USDC), the provider's actual rate only matters at completion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Mapping

from domain import accounts
from domain.conversions import Direction, at_par, direction_between, par_value
from domain.errors import InvalidCommand
from domain.money import major_to_minor

CRITICAL_LOW = "CRITICAL_LOW"
BELOW_TARGET = "BELOW_TARGET"
OVER_CAPITALIZED = "OVER_CAPITALIZED"
HEALTHY = "HEALTHY"

#: Buffer account type -> its currency.
CURRENCY_OF: dict[str, str] = {
    "system_buffer_usdc": "USDC",
    "system_buffer_fiat": "USD",
    "broker_operational": "USD",
}

#: Which buffer refills which: usdc <- fiat (USD->USDC); fiat and broker <- usdc (USDC->USD).
SOURCE_OF: dict[str, str] = {
    "system_buffer_usdc": "system_buffer_fiat",
    "system_buffer_fiat": "system_buffer_usdc",
    "broker_operational": "system_buffer_usdc",
}


def account_code(account_type: str) -> str:
    """The ledger account of a buffer (SPEC §0: ``buffer:{account_type}``)."""
    return accounts.buffer(account_type)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The levels of one buffer, in minor units of its currency.

    Parameters:
      min: below it the buffer is CRITICAL_LOW and gets replenished.
      target: what a replenishment aims for.
      max: above it the buffer is OVER_CAPITALIZED.
      batch: conversions are sized in whole batches of this.
    """

    min: int
    target: int
    max: int
    batch: int

    def __post_init__(self) -> None:
        for name in ("min", "target", "max", "batch"):
            if type(getattr(self, name)) is not int:
                raise InvalidCommand(f"{name} must be an integer amount in minor units")
        if not 0 <= self.min < self.target < self.max:
            raise InvalidCommand(
                f"thresholds need 0 <= min < target < max, got {self.min}/{self.target}/{self.max}"
            )
        if self.batch <= 0:
            raise InvalidCommand("batch must be positive")


def changed_thresholds(t: Thresholds, *, min: int | None = None, target: int | None = None,
                       max: int | None = None, batch: int | None = None) -> Thresholds:
    """``t`` with the levels given changed and the others kept (validated as a whole)."""
    return Thresholds(t.min if min is None else min, t.target if target is None else target,
                      t.max if max is None else max, t.batch if batch is None else batch)


def thresholds_doc(t: Thresholds) -> dict[str, int]:
    """``{"min", "target", "max", "batch"}``, as the levers' audit and the CLI show them."""
    return {"min": t.min, "target": t.target, "max": t.max, "batch": t.batch}


def _default(currency: str, mn: int, target: int, mx: int, batch: int) -> Thresholds:
    return Thresholds(*(major_to_minor(v, currency) for v in (mn, target, mx, batch)))


#: SPEC §3's table (major units) in minor units.
DEFAULT_THRESHOLDS: dict[str, Thresholds] = {
    "system_buffer_usdc": _default("USDC", 10_000, 50_000, 100_000, 20_000),
    "system_buffer_fiat": _default("USD", 20_000, 100_000, 200_000, 50_000),
    "broker_operational": _default("USD", 50_000, 200_000, 500_000, 100_000),
}


def status(balance: int, t: Thresholds) -> str:
    """CRITICAL_LOW (< min), BELOW_TARGET (< target), OVER_CAPITALIZED (> max), else HEALTHY."""
    if balance < t.min:
        return CRITICAL_LOW
    if balance < t.target:
        return BELOW_TARGET
    if balance > t.max:
        return OVER_CAPITALIZED
    return HEALTHY


@dataclass(frozen=True, slots=True)
class Replenishment:
    """A conversion the settlement cycle should start.

    Parameters:
      destination: the buffer account type being refilled.
      source: the buffer account type paying for it.
      direction: the conversion's direction.
      source_amount: what leaves the source, minor units of its currency.
      expected_amount: what should arrive at par, minor units of the destination.
      capped: True when the source's own min (or its minor unit) limited the amount.
      wanted_amount: what the buffer wanted, minor units of the source (equal to
        ``source_amount`` unless capped).
    """

    destination: str
    source: str
    direction: Direction
    source_amount: int
    expected_amount: int
    capped: bool
    wanted_amount: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class CannotReplenish:
    """Why no job was created for a buffer below min (an alert says it)."""

    destination: str
    source: str
    reason: str


def spare(balance: int, thresholds: Thresholds, reserved: int = 0) -> int:
    """What a source buffer can give without going below its own min.

    ``reserved`` is what its jobs already created, and not yet moved to
    transit, will take (a job in transit has left the balance already).
    Never negative: a source at or below its min spares nothing.
    """
    return max(0, balance - thresholds.min - reserved)


def plan_replenishment(
    destination: str,
    balance: int,
    thresholds: Thresholds,
    source_balance: int,
    source_thresholds: Thresholds,
    provider_minimum: int | None,
    source_reserved: int = 0,
) -> Replenishment | CannotReplenish | None:
    """What the settlement cycle does for one buffer (SPEC §3).

    None when the buffer is not below min.  The amount is what brings it up
    to target, rounded *up* to whole batches, but never past its max; the
    source pays at par, rounded up to its minor unit, and is capped at what
    it can spare (``spare``: it stays at or above its own min, after what
    its pending jobs will take).  A capped amount is rounded *down* to whole
    batches when at least one batch fits, else it is all that is spare (a
    buffer below min is better served by part of a batch than by nothing).
    ``provider_minimum`` is the smallest par value (USD cents) any eligible
    provider accepts, None when no provider serves the direction.
    """
    if balance >= thresholds.min:
        return None
    source = SOURCE_OF[destination]
    dest_cur, src_cur = CURRENCY_OF[destination], CURRENCY_OF[source]
    direction = direction_between(src_cur, dest_cur)
    deficit = thresholds.target - balance
    batches = -(-deficit // thresholds.batch)
    wanted = min(batches * thresholds.batch, thresholds.max - balance)
    needed = at_par(wanted, dest_cur, src_cur, round_up=True)
    # Rounding the source up to its minor unit may overshoot max (a cent is 10,000
    # micro-USDC): then pay only the whole source units that fit under max.
    whole_units_only = at_par(needed, src_cur, dest_cur, round_up=False) > thresholds.max - balance
    if whole_units_only:
        needed = at_par(wanted, dest_cur, src_cur, round_up=False)
        if needed <= 0:
            return CannotReplenish(destination, source,
                                   f"room below max ({thresholds.max - balance} {dest_cur}) is "
                                   f"less than one minor unit of {src_cur}")
    available = spare(source_balance, source_thresholds, source_reserved)
    if available <= 0:
        if source_reserved:
            return CannotReplenish(destination, source,
                                   f"{source} can spare nothing: {source_balance} - its min "
                                   f"{source_thresholds.min} - {source_reserved} already held by "
                                   f"jobs {src_cur}")
        return CannotReplenish(destination, source,
                               f"{source} is at or below its own min ({source_balance} <= "
                               f"{source_thresholds.min} {src_cur})")
    amount = min(needed, available)
    if amount < needed:
        batch_cost = at_par(thresholds.batch, dest_cur, src_cur, round_up=True)
        if available >= batch_cost:
            amount = available // batch_cost * batch_cost
    if provider_minimum is None:
        return CannotReplenish(destination, source, f"no active provider converts {direction}")
    if par_value(amount, src_cur) < provider_minimum:
        return CannotReplenish(destination, source,
                               f"{amount} {src_cur} is below the smallest provider minimum "
                               f"({provider_minimum} USD cents)")
    return Replenishment(destination, source, direction, amount,
                         at_par(amount, src_cur, dest_cur, round_up=False),
                         amount < needed or whole_units_only, needed)


@dataclass(frozen=True, slots=True)
class BufferLevel:
    """One buffer as the cycle sees it: its balance and thresholds."""

    account_type: str
    balance: int
    thresholds: Thresholds


def criticality(level: BufferLevel) -> tuple[Fraction, str]:
    """Sort key, most critical first: the lowest balance as a share of its min,
    ties broken by account type (a fixed, stated rule)."""
    share = Fraction(level.balance, level.thresholds.min) if level.thresholds.min else Fraction(1)
    return share, level.account_type


def plan_cycle(
    levels: Mapping[str, BufferLevel],
    reserved: Mapping[str, int],
    in_flight: frozenset[str] | set[str],
    provider_minimum: Mapping[Direction, int | None],
) -> list[Replenishment | CannotReplenish]:
    """A whole settlement cycle, planned at once (SPEC §3).

    Every buffer below min with no job in flight towards it gets a plan, the
    most critical first (``criticality``).  Buffers that draw on the same
    source share what it can spare: each plan is sized from what the source
    has left after its pending jobs (``reserved``, by account type) *and*
    after the plans made before it in this cycle.  So the sum planned from a
    source never exceeds ``spare`` of it.
    """
    used: dict[str, int] = {}  # planned from each source so far in this cycle
    plans: list[Replenishment | CannotReplenish] = []
    for level in sorted(levels.values(), key=criticality):
        if level.balance >= level.thresholds.min or level.account_type in in_flight:
            continue
        src = levels[SOURCE_OF[level.account_type]]
        direction = direction_between(CURRENCY_OF[src.account_type],
                                      CURRENCY_OF[level.account_type])
        held = reserved.get(src.account_type, 0) + used.get(src.account_type, 0)
        plan = plan_replenishment(level.account_type, level.balance, level.thresholds,
                                  src.balance, src.thresholds, provider_minimum.get(direction),
                                  source_reserved=held)
        if isinstance(plan, Replenishment):
            used[src.account_type] = used.get(src.account_type, 0) + plan.source_amount
        plans.append(plan)
    return plans


def may_take(source_type: str, amount: int, balance: int, thresholds: Thresholds,
             reserved: int = 0) -> str | None:
    """Why ``amount`` may not leave the source buffer now, or None when it may.

    The rule every conversion obeys at creation and again at submission
    (under the source's lock): the source keeps its own min after what its
    earlier pending jobs (``reserved``) will take.
    """
    room = spare(balance, thresholds, reserved)
    if amount > room:
        cur = CURRENCY_OF[source_type]
        return (f"{account_code(source_type)} can spare {room} {cur} (balance {balance} - min "
                f"{thresholds.min} - {reserved} held by earlier pending jobs), not {amount}")
    return None
