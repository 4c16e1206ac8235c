"""structlog set-up: JSON lines in production, a console renderer for people."""

from __future__ import annotations

import logging
import sys

import structlog

from infra.settings import get_settings

_configured = False


def configure_logging(fmt: str | None = None, level: str | None = None) -> None:
    """Configure structlog and the stdlib root logger once per process.

    Parameters:
      fmt: ``json`` or ``console``; defaults to ``BALLAST_LOG_FORMAT``.
      level: log level name; defaults to ``BALLAST_LOG_LEVEL``.
    """
    global _configured
    settings = get_settings()
    fmt = fmt or settings.log_format
    level_no = logging.getLevelName((level or settings.log_level).upper())
    renderer = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Route dramatiq/pika/alembic stdlib logs through the same renderer.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_no)
    logging.getLogger("pika").setLevel(logging.WARNING)
    _configured = True


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    if not _configured:
        configure_logging()
    return structlog.get_logger(name)
