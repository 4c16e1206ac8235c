"""Demo chapter: challenges (filled in by its capability)."""

from __future__ import annotations

from infra.demo.context import DemoContext


def run(ctx: DemoContext) -> None:
    """Drive this capability through the real workers and report what happened."""
    ctx.skip("challenges", "not built yet")
