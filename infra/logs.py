"""structlog set-up: JSON lines in production, a console renderer for people.

One writer, one lock: structlog's lines and every stdlib logger's (Dramatiq,
pika, alembic) go through the same ``logging`` handler, whose stream writes a
whole line per ``write`` under one process-wide lock.  A Dramatiq worker
process's stderr is a pipe that frames each ``write``; two writers with two
locks (structlog's and the handler's) used to cut each other's frames and
silence the worker's logs for good.

Every line is one JSON document (``BALLAST_LOG_FORMAT=json``, the default) with
``timestamp``, ``level``, ``logger`` (the logger's name: ``infra.outbox``,
``dramatiq.worker.WorkerThread``, ``pika.adapters...``), ``pid``, ``service``
(``worker``, ``scheduler``, ``console``, ``callbacks``, ``cli``) and ``event``; an
exception is rendered as text in ``exception``.  Dramatiq's own lines name a message
by actor and id only (``deposit[3f2a...]``): it would otherwise print every kwarg of a
failed message (personal data, a 5,000-entry import).

Bounded: no line is longer than ``MAX_LINE_CHARS``.  Every value is cut to
``MAX_VALUE_CHARS`` (tracebacks to ``MAX_TRACEBACK_CHARS``) with the number of
characters left out, so a 100 KB kwarg is never dumped whole.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from typing import Any

import structlog

from infra.settings import get_settings

MAX_LINE_CHARS = 8192  # characters of one rendered line, newline excluded
MAX_VALUE_CHARS = 1000  # characters of one value (message text, kwarg, id...)
MAX_TRACEBACK_CHARS = 4000  # characters of a rendered exception (its last ones are kept)

_configured = False
_LOCK = threading.Lock()
_service = "ballast"

#: ``ballast COMMAND`` -> the service its lines name.
_SERVICES = {"worker": "worker", "scheduler": "scheduler", "web": "console",
             "callbacks": "callbacks", "demo": "demo"}


def _reset_lock() -> None:
    global _LOCK
    _LOCK = threading.Lock()


# A fork while another thread writes would leave the child's copy of the lock held forever.
os.register_at_fork(after_in_child=_reset_lock)


class LineStream:
    """The one writer: each ``write`` goes out whole, under the process-wide lock, to
    ``target`` or else to the current ``sys.stderr`` (looked up at every write: a Dramatiq
    worker process replaces it with its logging pipe after start-up)."""

    def __init__(self, target: Any = None) -> None:
        self.target = target

    def write(self, text: str) -> int:
        with _LOCK:
            stream = self.target or sys.stderr
            stream.write(text)
            stream.flush()
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _cut(value: str, limit: int, keep_end: bool = False) -> str:
    if len(value) <= limit:
        return value
    left = len(value) - limit
    if keep_end:
        return f"…({left} chars cut) " + value[-limit:]
    return value[:limit] + f"…({left} chars cut)"


def _bound(value: Any, limit: int, depth: int = 0) -> Any:
    if isinstance(value, str):
        return _cut(value, limit)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if isinstance(value, dict) and depth < 2:
        return {str(k)[:100]: _bound(v, limit, depth + 1) for k, v in list(value.items())[:50]}
    if isinstance(value, (list, tuple)) and depth < 2:
        return [_bound(v, limit, depth + 1) for v in list(value)[:50]]
    return _cut(repr(value), limit)


def bound_values(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: every value cut to its bound (after the exception is rendered)."""
    out = {}
    for key, value in event.items():
        if key in ("_record", "_from_structlog"):  # ProcessorFormatter's own, removed later
            out[key] = value
        elif key in ("exception", "stack"):
            out[key] = _cut(str(value), MAX_TRACEBACK_CHARS, keep_end=True)
        else:
            out[key] = _bound(value, MAX_VALUE_CHARS)
    return out


#: What a line keeps whatever else is cut (``event`` may be shortened, never dropped).
_KEPT = ("event", "level", "timestamp", "logger", "pid", "service")


class BoundedJSON:
    """JSONRenderer whose output never exceeds ``MAX_LINE_CHARS``: when it would, the longest
    values are cut further (and named in ``truncated``) until the line fits."""

    def __init__(self) -> None:
        self._render = structlog.processors.JSONRenderer(default=str)

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> str:
        line = self._render(logger, method, dict(event))
        if len(line) <= MAX_LINE_CHARS:
            return line
        event = dict(event)
        cut: list[str] = []
        while len(line) > MAX_LINE_CHARS:
            sizes = {k: len(json.dumps(v, default=str)) for k, v in event.items()
                     if k not in _KEPT[1:] and k != "truncated"}
            if not sizes:
                break
            key = max(sizes, key=sizes.get)
            if sizes[key] <= 40:
                event = {k: event[k] for k in _KEPT if k in event}
                event["truncated"] = cut
                line = self._render(logger, method, event)
                break
            text = event[key] if isinstance(event[key], str) else json.dumps(event[key], default=str)
            event[key] = _cut(text, max(20, sizes[key] // 4))
            if key not in cut:
                cut.append(key)
            event["truncated"] = cut
            line = self._render(logger, method, event)
        return line[:MAX_LINE_CHARS]


def guess_service(argv: list[str] | None = None) -> str:
    """The service of this process: ``BALLAST_SERVICE``, else from its command line
    (``python -m infra.worker`` is ``worker``, ``ballast scheduler`` is ``scheduler``,
    any other ``ballast`` command is ``cli``)."""
    if os.environ.get("BALLAST_SERVICE"):
        return os.environ["BALLAST_SERVICE"]
    argv = sys.argv if argv is None else argv
    if argv and argv[0].replace("\\", "/").endswith("infra/worker.py"):
        return "worker"
    words = [a for a in argv[1:] if not a.startswith("-")]
    if words and words[0] in _SERVICES:
        return _SERVICES[words[0]]
    return "cli"


def add_process(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: ``pid`` (looked up per line: a forked child has its own) and
    ``service``."""
    event.setdefault("pid", os.getpid())
    event.setdefault("service", _service)
    return event


def _message_name(value: Any) -> Any:
    """A Dramatiq message as ``actor[message_id]``; anything else as it is."""
    import dramatiq

    message = getattr(value, "_message", value)  # a MessageProxy holds its Message
    if isinstance(message, dramatiq.Message):
        return f"{message.actor_name}[{message.message_id}]"
    return value


class NoKwargs(logging.Filter):
    """Dramatiq formats a message with ``%s`` as ``actor(kwarg=value, ...)``: every kwarg,
    whole.  This filter replaces each message among a record's arguments by its actor and
    id before the line is formatted, so no kwarg value reaches a log line this way."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("dramatiq") and record.args:
            if isinstance(record.args, tuple):
                record.args = tuple(_message_name(a) for a in record.args)
            elif isinstance(record.args, dict):
                record.args = {k: _message_name(v) for k, v in record.args.items()}
        return True


def _thread_died(args: threading.ExceptHookArgs) -> None:
    """A thread's uncaught exception as one bounded log line (not a raw traceback on stderr)."""
    if args.exc_type is SystemExit:
        return
    structlog.get_logger("infra.logs").error(
        "thread.died", thread=getattr(args.thread, "name", None),
        error=f"{args.exc_type.__name__}: {args.exc_value}",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


#: The level each library logs at in a long-running process.
LIBRARY_LEVELS = {
    "dramatiq": logging.NOTSET, "redis": logging.NOTSET, "alembic": logging.NOTSET,
    "pika": logging.WARNING, "sqlalchemy": logging.WARNING, "urllib3": logging.WARNING,
    "httpx": logging.WARNING, "httpcore": logging.WARNING,
}


def configure_logging(fmt: str | None = None, level: str | None = None, stream: Any = None,
                      service: str | None = None) -> None:
    """Configure structlog and the stdlib root logger (one handler) for this process.

    Parameters:
      fmt: ``json`` or ``console``; defaults to ``BALLAST_LOG_FORMAT``.
      level: log level name; defaults to ``BALLAST_LOG_LEVEL``.
      stream: where lines go; default: ``sys.stderr`` as it is at each write.
      service: the ``service`` every line names; default: ``guess_service()``.
    """
    global _configured, _service
    _service = service or guess_service()
    settings = get_settings()
    fmt = fmt or settings.log_format
    level_no = logging.getLevelName((level or settings.log_level).upper())
    stream = LineStream(stream)
    renderer = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if fmt == "console"
        else BoundedJSON()
    )
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        add_process,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        bound_values,
    ]
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.addFilter(NoKwargs())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_no)
    # A long-running process (worker, scheduler, console, callbacks) hears every library,
    # even where a one-shot CLI command had quieted them (infra.cli.main.quiet_libraries).
    # Their own defaults otherwise: SQLAlchemy's WARNING, and no line per HTTP request.
    for name, lib_level in LIBRARY_LEVELS.items():
        logging.getLogger(name).setLevel(lib_level)
    logging.captureWarnings(True)
    threading.excepthook = _thread_died
    _configured = True


def ensure_logging() -> None:
    """Configure logging with the defaults unless this process did already (the CLI at
    WARNING, a worker process on its pipe): a package imported later keeps that set-up."""
    if not _configured:
        configure_logging()


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    if not _configured:
        configure_logging()
    return structlog.get_logger(name)
