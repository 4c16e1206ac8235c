"""CLI views of the journal capability (CONTRACT.md)."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    """Add this capability's commands to `ballast`."""
    return None
