"""The provider interface: initiate an order, ask its status, check health.

A provider knows orders by the idempotency key Ballast gives each submission
attempt; initiating twice with one key is one order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from infra.errors import Transient


@dataclass(frozen=True, slots=True)
class Order:
    """One conversion order.

    Parameters:
      idempotency_key: unique per submission attempt; the provider dedupes on it.
      direction: ``USD->USDC`` or ``USDC->USD``.
      source_amount: minor units of the source currency.
    """

    idempotency_key: str
    direction: str
    source_amount: int


@dataclass(frozen=True, slots=True)
class Report:
    """What the provider says about an order.

    Parameters:
      state: ``not_found``, ``processing``, ``completed`` or ``failed``.
      reference: the provider's own id of the order.
      destination_amount: net minor units delivered (completed only).
      fee_amount: the fee in destination minor units (completed only).
      rate_ppm: the rate actually applied, ppm (completed only, if told).
      detail: a reason, for failures.
    """

    state: str
    reference: str | None = None
    destination_amount: int | None = None
    fee_amount: int | None = None
    rate_ppm: int | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderQuote:
    """What a provider says an order would deliver (cost-aware selection).

    Parameters:
      rate_ppm: destination major units per source major unit, times 10^6.
      fee_amount: its fee, destination minor units.
      destination_amount: net minor units the destination would receive.
      source: ``provider`` (it quoted) or ``configured`` (its configured rate and fee).
    """

    rate_ppm: int
    fee_amount: int
    destination_amount: int
    source: str = "provider"


class ProviderError(Exception):
    """Base of what a provider call can raise."""


class ProviderRejected(ProviderError):
    """The provider definitively refused the order: try the next one."""


class ProviderUnavailable(ProviderError, Transient):
    """The call failed.

    Parameters:
      maybe_accepted: False only when the request provably never reached the
        provider (connection refused); True means ask before going elsewhere.
    """

    def __init__(self, message: str, *, maybe_accepted: bool = True) -> None:
        super().__init__(message)
        self.maybe_accepted = maybe_accepted


class Provider(Protocol):
    name: str

    def initiate(self, order: Order) -> Report: ...

    def status(self, idempotency_key: str) -> Report: ...

    def health(self) -> bool: ...

    def quote(self, direction: str, source_amount: int) -> ProviderQuote | None:
        """What an order would deliver now; None when it cannot say."""
        ...

    def balances(self) -> dict[str, int] | None:
        """Its books of Ballast's completed orders, per currency: what it received (+)
        less what it delivered with fees (-) — the mirror of ``provider:NAME:CUR``.
        None when it does not report."""
        ...
