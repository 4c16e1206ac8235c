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


__all__ = ["KINDS", "Order", "Provider", "ProviderError", "ProviderQuote", "ProviderRejected",
           "ProviderUnavailable", "Report", "build"]
