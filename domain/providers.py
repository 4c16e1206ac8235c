"""Conversion providers: health and selection (SPEC §3), pure.

Provider limits (min, max, daily volume) are in USD cents at par, whichever
the direction, so one number bounds both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Iterable, Mapping, Sequence

#: Fewer outcomes than this say nothing about a provider's health.
HEALTH_MIN_ATTEMPTS = 10
#: Below this success rate (in basis points) a provider is degraded.
HEALTH_MIN_SUCCESS_BPS = 8_000
#: Provider outcomes older than this no longer count for its health.
HEALTH_WINDOW = timedelta(hours=24)
#: A health probe older than this says nothing about a provider (as in v_provider_health).
PROBE_FRESH = timedelta(seconds=300)

ACTIVE = "active"
PAUSED = "paused"


def is_healthy(successes: int, failures: int) -> bool:
    """Degraded means at least 10 outcomes with a success rate below 80 %."""
    attempts = successes + failures
    return attempts < HEALTH_MIN_ATTEMPTS or successes * 10_000 >= HEALTH_MIN_SUCCESS_BPS * attempts


@dataclass(frozen=True, slots=True)
class ProviderView:
    """What selection needs to know about a provider.

    Parameters:
      name: unique name.
      priority: lower wins.
      status: ``active`` or ``paused``.
      directions: the directions it converts.
      min_amount, max_amount: per order, USD cents at par (max None: no limit).
      daily_limit: USD cents at par per day (None: no limit).
      daily_volume_used: what today's orders already hold of it.
      successes, failures: outcomes in the health window.
      probe_healthy: the latest fresh health probe (None: no fresh probe, says nothing).
    """

    name: str
    priority: int
    status: str = ACTIVE
    directions: frozenset[str] = field(default_factory=lambda: frozenset({"USD->USDC", "USDC->USD"}))
    min_amount: int = 0
    max_amount: int | None = None
    daily_limit: int | None = None
    daily_volume_used: int = 0
    successes: int = 0
    failures: int = 0
    probe_healthy: bool | None = None

    @property
    def healthy(self) -> bool:
        """Its outcomes say healthy and its latest fresh probe does not say down."""
        return is_healthy(self.successes, self.failures) and self.probe_healthy is not False

    @property
    def remaining_daily(self) -> int | None:
        return None if self.daily_limit is None else max(0, self.daily_limit - self.daily_volume_used)


def why_not(p: ProviderView, direction: str, par_amount: int) -> str | None:
    """Why ``p`` cannot take this order, or None when it can."""
    if p.status != ACTIVE:
        return f"{p.name} is {p.status}"
    if direction not in p.directions:
        return f"{p.name} does not convert {direction}"
    if par_amount < p.min_amount:
        return f"{p.name} takes at least {p.min_amount}"
    if p.max_amount is not None and par_amount > p.max_amount:
        return f"{p.name} takes at most {p.max_amount}"
    remaining = p.remaining_daily
    if remaining is not None and par_amount > remaining:
        return f"{p.name} has {remaining} of its daily volume left"
    if p.probe_healthy is False:
        return f"{p.name} failed its health probe"
    if not p.healthy:
        return f"{p.name} is degraded"
    return None


def rank(providers: Iterable[ProviderView], direction: str, par_amount: int,
         exclude: Sequence[str] = ()) -> list[ProviderView]:
    """The providers that may take the order, best first (lowest priority, then name)."""
    eligible = [p for p in providers
                if p.name not in exclude and why_not(p, direction, par_amount) is None]
    return sorted(eligible, key=lambda p: (p.priority, p.name))


def choose(eligible: Sequence[ProviderView], nets: Mapping[str, int | None]) -> list[ProviderView]:
    """Cost-aware order among eligible providers: the most delivered to the destination
    (``nets``: each provider's quoted net, destination minor units) wins; priority, then
    name, breaks ties.  Quotes compare only when every eligible provider gave one: with
    any quote missing, the order is by priority alone (what cannot be priced is not
    assumed cheaper or dearer)."""
    if any(nets.get(p.name) is None for p in eligible):
        return sorted(eligible, key=lambda p: (p.priority, p.name))
    return sorted(eligible, key=lambda p: (-nets[p.name], p.priority, p.name))


def smallest_minimum(providers: Iterable[ProviderView], direction: str) -> int | None:
    """The lowest order minimum among active, healthy providers of ``direction``."""
    mins = [p.min_amount for p in providers
            if p.status == ACTIVE and direction in p.directions and p.healthy]
    return min(mins) if mins else None
