"""Is each of the three services reachable?  One line each on how to start it."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

from sqlalchemy.engine import make_url

from infra.settings import broker_urls, get_settings

HOW_TO_START = {
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "RabbitMQ": "rabbitmq-server -detached",
    "Redis": 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no',
}


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


def unreachable() -> list[str]:
    """One line per service that does not accept TCP connections."""
    lines = []
    for name, (host, port) in endpoints().items():
        candidates = [(host, port)]
        if name == "RabbitMQ":  # a cluster is reachable when any of its nodes is
            candidates = [(u.hostname or "127.0.0.1", u.port or 5672)
                          for u in map(urlparse, broker_urls(get_settings().broker_url))]
        if not any(_accepts(h, p) for h, p in candidates):
            lines.append(
                f"{name} is unreachable at {host}:{port}: start it with `{HOW_TO_START[name]}` "
                "(or `docker compose up -d`)"
            )
    return lines


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False
