"""How the CLI talks: JSON documents for scripts, tables for people, tab-separated when piped.

Three formats (``--format plain|tsv|json``, on ``ballast`` itself or on any command;
``--json`` is ``--format json``):

- ``plain``: aligned tables that fit the terminal (80 columns when it cannot tell): ids are
  never folded or cut (they are copied and pasted), numbers are right-aligned, amounts are
  in major units with their currency, timestamps to the second (UTC, ``…Z``). A table too
  wide even with its text columns folded is printed one record at a time (``key  value``).
- ``tsv``: one header line, then one line per row, cells separated by a tab (a table's
  title, if any, is a ``# title`` line above it). The default when stdout is not a
  terminal.
- ``json``: one JSON document, amounts in minor units — what ``--json`` always printed.

Long operations show a progress bar on a terminal (``progress``), on stderr, and nothing
when stderr is not a terminal.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import shutil
import sys
import textwrap
from datetime import date, datetime, timezone
from typing import Any, Callable, Iterable, Iterator, Sequence

import click
from rich.console import Console

from domain.money import CURRENCIES, format_minor
from infra.settings import get_settings

console = Console()

FORMATS = ("plain", "tsv", "json")

#: Where the format chosen on the command line (``ballast --format F`` or a command's own)
#: is kept: the invocation's context meta, shared by a group and its subcommands.
_META = "ballast.format"


def _chosen() -> str | None:
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(_META) if ctx is not None else None


def _choose(value: str) -> None:
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[_META] = value


def _set_format(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.meta[_META] = value


format_option = click.option(
    "--format", "output_format", type=click.Choice(FORMATS), default=None,
    expose_value=False, is_eager=True, callback=_set_format,
    help="plain (tables for people; the default on a terminal), tsv (the default when piped) "
         "or json (the same as --json).")


def json_option(fn: Callable) -> Callable:
    """``--json`` and ``--format plain|tsv|json``; the command receives ``as_json``, true for
    either ``--json`` or a JSON format."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("as_json"):
            _choose("json")
        kwargs["as_json"] = _chosen() == "json"
        return fn(*args, **kwargs)

    wrapper = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON document (--format json).")(wrapper)
    return format_option(wrapper)


def current_format() -> str:
    """The format in force: the one chosen, else plain on a terminal and tsv when piped."""
    chosen = _chosen()
    if chosen:
        return chosen
    return "plain" if sys.stdout.isatty() else "tsv"


def width() -> int:
    """The terminal's width (``COLUMNS`` when set), 80 when it cannot tell."""
    return max(40, shutil.get_terminal_size((80, 24)).columns)


def emit(doc: Any, as_json: bool, human: Callable[[Any], None] | None = None) -> None:
    """Print ``doc`` as JSON, or hand it to ``human`` for a readable rendering (a record
    or a table of ``doc`` itself without one)."""
    if as_json or current_format() == "json":
        click.echo(json.dumps(doc, default=str))
    elif human is not None:
        human(doc)
    elif isinstance(doc, dict):
        record(doc)
    elif isinstance(doc, list) and all(isinstance(r, dict) for r in doc):
        table(doc)
    else:
        click.echo(json.dumps(doc, default=str, indent=2))


# --- cells -------------------------------------------------------------------------------

#: Columns holding an amount in minor units of the row's ``currency`` (or the table's).
MONEY = {
    "amount", "balance", "balance_before", "balance_after", "min", "target", "max", "batch",
    "stake", "treasury_staked", "treasury_payout", "pnl", "payout", "profit", "pledged",
    "payment", "expected", "actual", "difference", "daily_used", "daily_limit", "weekly_used",
    "weekly_limit", "min_balance", "max_balance", "warning", "critical", "cached", "entries_sum",
    "sum", "fee_amount", "net_change", "volume", "start_balance", "end_balance", "pool",
    "total_allocated", "net_pnl", "confirmed_amount", "initial_capital", "closing_capital",
    "source_amount", "destination_amount", "daily_volume_used", "fee",
}

#: Columns never folded besides ``*_id``, ``*_ids`` and numbers: what people copy and paste.
_UNFOLDED = {"queue", "name", "id", "account", "account_type", "actor", "code", "key_id",
             "idempotency_key", "provider", "producer", "currency", "direction", "status",
             "kind", "cursor"}

_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([+-]\d{2}:?\d{2}|Z)?$")


def timestamp(value: datetime | str | None) -> str:
    """A time to the second, in UTC: ``2026-12-01T12:52:22Z`` (``-`` for none)."""
    if value is None:
        return "-"
    at = datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value
    if at.tzinfo is not None:
        at = at.astimezone(timezone.utc)
    return at.strftime("%Y-%m-%dT%H:%M:%S") + ("Z" if at.tzinfo is not None else "")


def cell(column: str, value: Any, currency: str | None = None) -> str:
    """One value as people read it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and column in MONEY and currency in CURRENCIES:
        return format_minor(value, currency)
    if isinstance(value, datetime):
        return timestamp(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        if _ISO.match(value):
            try:
                return timestamp(value)
            except ValueError:
                return value
        return value
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1e15 else str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(cell(column, v, currency) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, default=str, separators=(",", ":"))
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _unfolded(column: str) -> bool:
    return column in _UNFOLDED or column.endswith(("_id", "_ids", "_at")) or column == "at"


# --- tables ------------------------------------------------------------------------------

def table(rows: Sequence[dict[str, Any]], columns: Iterable[str] | None = None,
          title: str | None = None, currency: str | None = None,
          headers: dict[str, str] | None = None, detail: Sequence[str] = ()) -> None:
    """Rows as a table in the current format.

    ``currency``: of the amounts when a row has no ``currency`` of its own; when the table
    shows a ``currency`` column its amounts are printed without the code (the column says
    it). ``headers``: shorter names for people. ``detail``: columns printed for people on an
    indented line under their row (long text: a reason, a subject); in tsv they are columns
    like the others.
    """
    rows = list(rows)
    cols = list(columns or (rows[0].keys() if rows else []))
    fmt = current_format()
    if fmt == "json":
        click.echo(json.dumps(rows, default=str))
        return
    headers = headers or {}
    if fmt == "tsv":
        coded = "currency" not in cols
        cells = [[_money_cell(c, r.get(c), _currency(r, currency), coded, tsv=True) for c in cols]
                 for r in rows]
        if title:
            click.echo(f"# {title}")
        if cols:
            click.echo("\t".join(cols))
        for line in cells:
            click.echo("\t".join(v.replace("\t", " ").replace("\n", " ") for v in line))
        return
    if not rows:
        click.echo(f"{title + ': ' if title else ''}nothing to show")
        return
    main = [c for c in cols if c not in detail]
    coded = "currency" not in main
    cells = [[_money_cell(c, r.get(c), _currency(r, currency), coded) for c in main]
             for r in rows]
    right = [c in MONEY or (bool(vals) and all(_is_number(v) for v in vals))
             for c, vals in ((c, [r.get(c) for r in rows if r.get(c) is not None]) for c in main)]
    if title:
        heading(title)
    limit = width()
    lines = _render([headers.get(c, c) for c in main], cells, right,
                    [_unfolded(c) or right[i] for i, c in enumerate(main)], limit,
                    details=[_detail(r, detail, currency, limit) for r in rows] if detail else None)
    for line in lines:
        click.echo(line)


def heading(text_: str) -> None:
    """A title above a table or a record (bold on a terminal)."""
    click.echo(click.style(text_, bold=True) if sys.stdout.isatty() else text_)


def _currency(row: dict[str, Any], default: str | None) -> str | None:
    cur = row.get("currency")
    return cur if isinstance(cur, str) else default


def _money_cell(column: str, value: Any, currency: str | None, coded: bool,
                tsv: bool = False) -> str:
    """An amount without its code when a currency column says it (tsv: and without the
    thousands separators, so that it sorts and sums)."""
    text_ = cell(column, value, currency)
    if column in MONEY and currency in CURRENCIES and isinstance(value, int) \
            and not isinstance(value, bool):
        if not coded:
            text_ = text_.removesuffix(f" {currency}")
        if tsv:
            text_ = text_.replace(",", "")
    return text_


def _detail(row: dict[str, Any], columns: Sequence[str], currency: str | None,
            limit: int) -> list[str]:
    parts = [f"{c.replace('_', ' ')}: {cell(c, row.get(c), _currency(row, currency))}"
             for c in columns if row.get(c) not in (None, "", [], {})]
    if not parts:
        return []
    return textwrap.wrap("; ".join(parts), limit - 4, initial_indent="    ",
                         subsequent_indent="    ", break_long_words=False,
                         break_on_hyphens=False)


def _render(cols: list[str], cells: list[list[str]], right: list[bool], whole: list[bool],
            limit: int, details: list[list[str]] | None = None) -> list[str]:
    """Aligned lines no wider than ``limit``: text columns folded first, else one record
    at a time."""
    gap = 2
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(cols)]
    floor = [max(len(c), 8) if not whole[i] else widths[i] for i, c in enumerate(cols)]
    total = lambda: sum(widths) + gap * (len(cols) - 1)  # noqa: E731
    while total() > limit:  # narrow the widest text column, one character at a time
        foldable = [i for i in range(len(cols)) if widths[i] > floor[i]]
        if not foldable:
            return _records(cols, cells, limit, details)
        widths[max(foldable, key=lambda j: widths[j])] -= 1
    out = [_line([c for c in cols], widths, right, [False] * len(cols)),
           _line(["-" * w for w in widths], widths, right, [False] * len(cols))]
    for n, row in enumerate(cells):
        wrapped = [[v] if whole[i] or len(v) <= widths[i] else
                   (textwrap.wrap(v, widths[i], break_on_hyphens=False,
                                  break_long_words=max(map(len, v.split()), default=0) > widths[i])
                    or [""])
                   for i, v in enumerate(row)]
        for k in range(max(len(w) for w in wrapped)):
            out.append(_line([w[k] if k < len(w) else "" for w in wrapped], widths, right,
                             [False] * len(cols)))
        if details:
            out += details[n]
    return out


def _line(values: list[str], widths: list[int], right: list[bool], _: list[bool]) -> str:
    parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)]
    return "  ".join(parts).rstrip()


def _records(cols: list[str], cells: list[list[str]], limit: int,
             details: list[list[str]] | None = None) -> list[str]:
    key = max(len(c) for c in cols)
    out: list[str] = []
    for n, row in enumerate(cells):
        if n:
            out.append("")

        for c, v in zip(cols, row):
            room = max(20, limit - key - 2)
            if _unfolded(c) or len(v) <= room:
                out.append(f"{c.ljust(key)}  {v}".rstrip())
            else:
                pieces = textwrap.wrap(v, room, break_long_words=True,
                                       break_on_hyphens=False) or [""]
                out.append(f"{c.ljust(key)}  {pieces[0]}")
                out += [" " * (key + 2) + p for p in pieces[1:]]
        if details:
            out += details[n]
    return out


def record(doc: dict[str, Any], title: str | None = None, currency: str | None = None) -> None:
    """One document as ``key  value`` lines (tsv: ``key<TAB>value``)."""
    currency = doc.get("currency") if isinstance(doc.get("currency"), str) else currency
    fmt = current_format()
    if fmt == "json":
        click.echo(json.dumps(doc, default=str))
        return
    items = [(k, cell(k.rsplit(".", 1)[-1], v, cur or currency)) for k, v, cur in _flat(doc)]
    if fmt == "tsv":
        if title:
            click.echo(f"# {title}")
        for k, v in items:
            click.echo(f"{k}\t{v.replace(chr(9), ' ').replace(chr(10), ' ')}")
        return
    if title:
        heading(title)
    if items:
        for line in _records([k for k, _ in items], [[v for _, v in items]], width()):
            click.echo(line)


def _flat(doc: dict[str, Any], prefix: str = "",
          currency: str | None = None) -> list[tuple[str, Any, str | None]]:
    """Nested documents as ``outer.inner`` keys (one line each for people), each with the
    currency of the document it is in."""
    cur = doc.get("currency") if isinstance(doc.get("currency"), str) else currency
    out: list[tuple[str, Any, str | None]] = []
    for k, v in doc.items():
        if isinstance(v, dict) and v:
            out += _flat(v, f"{prefix}{k}.", cur)
        else:
            out.append((f"{prefix}{k}", v, cur))
    return out


# --- progress ----------------------------------------------------------------------------

@contextlib.contextmanager
def progress(what: str, total: int | None = None) -> Iterator[Callable[..., None]]:
    """A bar with counts and time left on stderr when it is a terminal; silent otherwise.

    Yields ``advance(n=1, total=None, what=None)``: ``total`` may be given (or changed) on
    the way, ``what`` renames the bar (the step under way).
    """
    if not sys.stderr.isatty():
        yield lambda n=1, total=None, what=None: None
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=None),
                   MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("elapsed,"),
                   TimeRemainingColumn(), TextColumn("left"), console=Console(stderr=True),
                   transient=False)
    task = bar.add_task(what, total=total)

    def advance(n: int = 1, total: int | None = None, what: str | None = None) -> None:
        if total is not None or what is not None:
            bar.update(task, **({"total": total} if total is not None else {}),
                       **({"description": what} if what is not None else {}))
        if n:
            bar.advance(task, n)

    with bar:
        yield advance
        if bar.tasks[0].total is None:
            bar.update(task, total=bar.tasks[0].completed)


# --- errors ------------------------------------------------------------------------------

def fail(message: str, code: int = 1) -> None:
    """One line on stderr, then exit with ``code`` (1 failed check, 2 bad usage)."""
    click.echo(message.splitlines()[0] if message else "failed", err=True)
    sys.exit(code)


def settings_or_exit() -> None:
    """A bad ``BALLAST_*`` value: one line naming it on stderr, exit 2 (no traceback)."""
    from pydantic import ValidationError

    try:
        get_settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ("BALLAST_" + "_".join(str(p) for p in err["loc"]).upper() + ": ") if err["loc"] else ""
        msg = str(err["msg"]).removeprefix("Value error, ").splitlines()[0]
        click.echo(f"error: {name}{msg}", err=True)
        sys.exit(2)
