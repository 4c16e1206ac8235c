"""Levers that move or cancel money: asked on a terminal, ``--yes`` in scripts, ``--dry-run``
to see what would happen, and every use recorded with who pulled it (``--by``).

A lever run without a terminal and without ``--yes`` is refused with one line and exit 2,
so a script can never pull one by accident.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import click
from sqlalchemy import Connection, text

from infra.cli.identity import operator_identity
from infra.cli.output import fail
from infra.db.engine import get_engine

by_option = click.option("--by", required=True, help="Who does it (recorded).")


def lever_options(fn: Callable) -> Callable:
    """``--yes`` and ``--dry-run``."""
    fn = click.option("--dry-run", is_flag=True,
                      help="Show what would happen; change nothing.")(fn)
    return click.option("--yes", "-y", is_flag=True,
                        help="Do it without asking (scripts; needed when not on a terminal).")(fn)


def confirm(action: str, yes: bool) -> None:
    """Ask "``action``. Go ahead?" on a terminal; refuse without ``--yes`` elsewhere."""
    if yes:
        return
    if not sys.stdin.isatty():
        fail(f"refused: {action} needs --yes when not run on a terminal", 2)
    if not click.confirm(f"{action}. Go ahead?", default=False, err=True):
        fail("nothing done", 1)


def record(conn: Connection, by: str, command: str, target: str | None,
           detail: dict[str, Any] | None = None) -> None:
    """One line of the operator action log (``operator_actions``), in ``conn``'s transaction."""
    conn.execute(
        text("INSERT INTO operator_actions (performed_by, command, target, detail) "
             "VALUES (:by, :c, :t, CAST(:d AS jsonb))"),
        {"by": by, "c": command, "t": target, "d": json.dumps(detail or {}, default=str)})


def record_now(by: str, command: str, target: str | None,
               detail: dict[str, Any] | None = None) -> None:
    """``record`` in a transaction of its own."""
    with get_engine().begin() as conn:
        record(conn, by, command, target, detail)


def check_by(by: str) -> None:
    """``--by`` names who pulls the lever, and must be the holder of the operator's key
    (``infra.cli.identity``): a lever is never pulled in someone else's name."""
    if not by.strip() or len(by) > 128:
        fail("--by names who does it: 1-128 characters", 2)
    operator_identity(by)
