"""How the CLI talks: JSON documents for scripts, rich tables for people."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Iterable, Sequence

import click
from rich import box
from rich.console import Console
from rich.table import Table

console = Console()

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


def emit(doc: Any, as_json: bool, human: Callable[[Any], None] | None = None) -> None:
    """Print ``doc`` as JSON, or hand it to ``human`` for a readable rendering."""
    if as_json or human is None:
        click.echo(json.dumps(doc, default=str, indent=None if as_json else 2))
    else:
        human(doc)


def table(rows: Sequence[dict[str, Any]], columns: Iterable[str] | None = None, title: str | None = None) -> None:
    rows = list(rows)
    cols = list(columns or (rows[0].keys() if rows else []))
    t = Table(title=title, show_lines=False, box=box.SIMPLE_HEAD, pad_edge=False,
              collapse_padding=True)
    for c in cols:
        values = [r.get(c) for r in rows if r.get(c) is not None]
        numeric = bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                       for v in values)
        # Ids and names are copied and pasted: never folded.
        whole = c in _UNFOLDED or c.endswith("_id")
        t.add_column(c, overflow="fold", no_wrap=whole,
                     min_width=max([len(c)] + [len(str(v)) for v in values])
                     if whole or numeric else None,
                     justify="right" if numeric else "left")
    for r in rows:
        t.add_row(*("" if r.get(c) is None else str(r.get(c)) for c in cols))
    if not rows:
        console.print(f"[dim]{title + ': ' if title else ''}nothing to show[/dim]")
        return
    console.print(t)


_UNFOLDED = {"queue", "name", "id", "account", "account_type", "actor"}


def fail(message: str, code: int = 1) -> None:
    """One line on stderr, then exit with ``code`` (1 failed check, 2 bad usage)."""
    click.echo(message.splitlines()[0] if message else "failed", err=True)
    sys.exit(code)


def settings_or_exit() -> None:
    """A bad ``BALLAST_*`` value: one line naming it on stderr, exit 2 (no traceback)."""
    from pydantic import ValidationError

    from infra.settings import get_settings

    try:
        get_settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ("BALLAST_" + "_".join(str(p) for p in err["loc"]).upper() + ": ") if err["loc"] else ""
        click.echo(f"error: {name}{err['msg'].removeprefix('Value error, ')}", err=True)
        sys.exit(2)
