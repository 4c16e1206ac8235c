"""Conversion providers behind one small interface (initiate, status, health)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from infra.providers.base import (
    Order,
    Provider,
    ProviderError,
    ProviderQuote,
    ProviderRejected,
    ProviderUnavailable,
    Report,
)
from domain.errors import InvalidCommand
from infra.providers import http, simulated
from infra.providers.http import HttpProvider
from infra.providers.simulated import SimulatedProvider

KINDS = ("simulated", "http")


def build(name: str, kind: str, config: dict[str, Any], engine: Engine | None = None) -> Provider:
    """The adapter for a row of ``conversion_providers``."""
    if kind == "simulated":
        return SimulatedProvider(name, config, engine)
    if kind == "http":
        return HttpProvider.from_config(name, config)
    raise ValueError(f"unknown provider kind {kind!r}")


def checked_config(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as the provider's row keeps it, validated by its kind's ``make_config``;
    an unknown key or a bad value is an InvalidCommand."""
    make = {"simulated": simulated.make_config, "http": http.make_config}.get(kind)
    if make is None:
        raise InvalidCommand(f"a provider's type is one of {', '.join(KINDS)}")
    try:
        return make(**config)
    except TypeError:
        raise InvalidCommand(f"a {kind} provider's configuration has unknown or missing keys: "
                             f"{', '.join(sorted(config)) or 'none'}") from None


__all__ = ["KINDS", "Order", "Provider", "ProviderError", "ProviderQuote", "ProviderRejected",
           "ProviderUnavailable", "Report", "build", "checked_config"]
