"""Is each of the three services reachable?  One line each on what to do about it.

The lines fit where they are printed: the command that starts a service on a developer's
machine (``pg_ctlcluster``, ``rabbitmq-server``, ``redis-server``) is only suggested when
the service is meant to run on this machine and that command exists here; elsewhere (a
container, production) the line names the address and the setting to check.
"""

from __future__ import annotations

import shutil
import socket
from urllib.parse import unquote, urlparse

from sqlalchemy.engine import make_url

from infra.settings import broker_urls, get_settings

#: How to start each service on a developer's machine (DEVELOPERS.md).
HOW_TO_START = {
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "RabbitMQ": "rabbitmq-server -detached",
    "Redis": 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no',
}

SETTING = {"PostgreSQL": "BALLAST_DATABASE_URL", "RabbitMQ": "BALLAST_BROKER_URL",
           "Redis": "BALLAST_REDIS_URL"}

_LOCAL = {"127.0.0.1", "localhost", "::1", ""}


def endpoints() -> dict[str, tuple[str, int]]:
    s = get_settings()
    db = make_url(s.database_url)
    amqp = urlparse(broker_urls(s.broker_url)[0])
    red = urlparse(s.redis_url)
    return {
        "PostgreSQL": (db.host or "127.0.0.1", db.port or 5432),
        "RabbitMQ": (amqp.hostname or "127.0.0.1", amqp.port or 5672),
        "Redis": (red.hostname or "127.0.0.1", red.port or 6379),
    }


def hint(name: str, host: str) -> str:
    """What to do about ``name`` being down at ``host``."""
    command = HOW_TO_START[name]
    if host in _LOCAL and shutil.which(command.split()[0]):
        return f"start it with `{command}` (or `docker compose up -d`)"
    return f"check that it runs and that {SETTING[name]} names it"


def unreachable() -> list[str]:
    """One line per service that does not accept TCP connections."""
    lines = []
    for name, (host, port) in endpoints().items():
        candidates = [(host, port)]
        if name == "RabbitMQ":  # a cluster is reachable when any of its nodes is
            candidates = [(u.hostname or "127.0.0.1", u.port or 5672)
                          for u in map(urlparse, broker_urls(get_settings().broker_url))]
        if not any(_accepts(h, p) for h, p in candidates):
            lines.append(f"{name} is unreachable at {host}:{port}: {hint(name, host)}")
    return lines


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def describe(exc: BaseException) -> str | None:
    """One line for a service that answered but refused (a wrong password, vhost or
    database), or None when ``exc`` is not one of those."""
    s = get_settings()
    text_ = f"{type(exc).__name__}: {exc}"
    names = {type(e).__name__ for e in _chain(exc)}
    if names & {"ProbableAuthenticationError", "AuthenticationError"} or "ACCESS_REFUSED" in text_:
        u = urlparse(broker_urls(s.broker_url)[0])
        return (f"RabbitMQ at {u.hostname}:{u.port or 5672} refused the login of user "
                f"{unquote(u.username or 'guest')!r}: wrong user or password in BALLAST_BROKER_URL")
    if names & {"ProbableAccessDeniedError"} or "NOT_ALLOWED" in text_:
        u = urlparse(broker_urls(s.broker_url)[0])
        vhost = unquote(u.path[1:]) if u.path and u.path != "/" else "/"
        return (f"RabbitMQ at {u.hostname}:{u.port or 5672}: vhost {vhost!r} does not exist or "
                f"user {unquote(u.username or 'guest')!r} may not use it (BALLAST_BROKER_URL)")
    if "OperationalError" in names or "psycopg" in text_:
        db = make_url(s.database_url)
        where = f"PostgreSQL at {db.host or '127.0.0.1'}:{db.port or 5432}"
        low = text_.lower()
        if any(m in low for m in ("connection refused", "timeout expired", "timed out",
                                  "could not translate host", "no route to host")):
            return None  # down: unreachable() says where and what to do
        if "does not exist" in low and "database" in low:
            return (f"{where}: database {db.database!r} does not exist (BALLAST_DATABASE_URL; "
                    "`ballast migrate` creates it)")
        if "password authentication failed" in low or "no password supplied" in low:
            return f"{where} refused user {db.username!r}: wrong password in BALLAST_DATABASE_URL"
        if "role" in low and "does not exist" in low:
            return f"{where}: user {db.username!r} does not exist (BALLAST_DATABASE_URL)"
        detail = _first_line(getattr(exc, "orig", None) or exc)
        return f"{where}: {detail}"
    if "redis" in type(exc).__module__ or any("redis" in type(e).__module__ for e in _chain(exc)):
        u = urlparse(s.redis_url)
        return f"Redis at {u.hostname}:{u.port or 6379}: {_first_line(exc)} (BALLAST_REDIS_URL)"
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    orig = getattr(exc, "orig", None)
    if isinstance(orig, BaseException):
        seen.append(orig)
    return seen


def _first_line(exc: object) -> str:
    text_ = str(exc).strip()
    for line in text_.splitlines():
        line = line.strip()
        if line.startswith("(") and ")" in line:  # sqlalchemy's "(psycopg.X) ..." prefix
            line = line.split(")", 1)[1].strip()
        if line:
            return line
    return type(exc).__name__
