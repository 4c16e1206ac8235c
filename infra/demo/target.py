"""Where the demo runs: a database, a vhost and a Redis db of its own, never production's.

The demo registers simulated providers, cancels conversion jobs, moves buffers and fires
schedules.  So it only ever runs on

- a PostgreSQL database of its own (``ballast_demo`` by default, on the server of
  ``BALLAST_DATABASE_URL``), marked as a demo database by a ``COMMENT ON DATABASE``. Each
  run drops and recreates it; a database that exists, is not empty and is not marked is
  refused, and so is the database ``BALLAST_DATABASE_URL`` names (unless marked) or one
  called ``ballast``;
- a RabbitMQ vhost of its own (``ballast_demo``, same marking by its description), so its
  workers never consume production's messages and production's never consume the demo's;
- a Redis db of its own (15 by default), so its scheduler never takes production's lease;
- no alert webhook and no metrics port (workers' nor scheduler's).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlparse, urlunparse

import psycopg
from sqlalchemy.engine import make_url

from infra import rabbit_admin
from infra.db.migrate import _libpq_dsn
from infra.settings import Settings, vhost_of, with_vhost

DEFAULT_NAME = "ballast_demo"
DEFAULT_REDIS_DB = 15
MARKER = "ballast demo database"
VHOST_MARKER = "ballast demo vhost"
NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
#: Never a demo's, whatever it holds: the production name of CONTRACT.md's default URL.
PRODUCTION_NAME = "ballast"


class DemoRefused(Exception):
    """The demo will not run there (one line: which, and why)."""


@dataclass(frozen=True)
class DemoTarget:
    database_url: str
    broker_url: str
    redis_url: str
    vhost: str

    @property
    def database(self) -> str:
        return make_url(self.database_url).database or ""

    def environ(self) -> dict[str, str]:
        """The ``BALLAST_*`` variables of every process the demo runs."""
        return {
            "BALLAST_DATABASE_URL": self.database_url,
            "BALLAST_BROKER_URL": self.broker_url,
            "BALLAST_REDIS_URL": self.redis_url,
            "BALLAST_ALERT_WEBHOOK_URL": "",
            "BALLAST_METRICS_PORT": os.environ.get("BALLAST_DEMO_METRICS_PORT", "0"),
            "BALLAST_SCHEDULER_METRICS_PORT": os.environ.get(
                "BALLAST_DEMO_SCHEDULER_METRICS_PORT", "0"),
        }


def target_for(settings: Settings, database: str = DEFAULT_NAME, vhost: str = DEFAULT_NAME,
               redis_db: int = DEFAULT_REDIS_DB) -> DemoTarget:
    """The demo's target on the servers of ``settings`` (nothing is contacted)."""
    db_url = make_url(settings.database_url).set(database=database)
    red = urlparse(settings.redis_url)
    return DemoTarget(
        database_url=db_url.render_as_string(hide_password=False),
        broker_url=with_vhost(settings.broker_url, vhost),
        redis_url=urlunparse(red._replace(path=f"/{redis_db}")),
        vhost=vhost,
    )


def _production_vhost(settings: Settings) -> str:
    return vhost_of(settings.broker_url)


def _production_redis_db(settings: Settings) -> int:
    path = urlparse(settings.redis_url).path.strip("/")
    return int(path) if path.isdigit() else 0


def database_state(url: str) -> str:
    """``absent``, ``demo`` (marked), ``empty`` (no relation in any user schema) or ``in use``."""
    name = make_url(url).database
    with psycopg.connect(_libpq_dsn(url, "postgres"), autocommit=True) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (name,)).fetchone()
    if row is None:
        return "absent"
    if (row[0] or "").startswith(MARKER):
        return "demo"
    with psycopg.connect(_libpq_dsn(url, name), autocommit=True) as conn:
        relations = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%%' AND n.nspname NOT LIKE 'pg_temp%%'").fetchone()[0]
    return "empty" if relations == 0 else "in use"


def check(target: DemoTarget, settings: Settings) -> str:
    """Refuse anything that is not the demo's own; returns the database's state."""
    name = target.database
    for what, value in (("database", name), ("vhost", target.vhost)):
        if not NAME.fullmatch(value):
            raise DemoRefused(f"--{what} {value!r}: 1-63 lowercase letters, digits and '_', "
                              "starting with a letter")
    if name == PRODUCTION_NAME:
        raise DemoRefused(f"the demo never runs on the database {name!r} (the production name); "
                          f"use --database {DEFAULT_NAME}")
    state = database_state(target.database_url)
    if name == make_url(settings.database_url).database and state != "demo":
        raise DemoRefused(f"the demo never runs on BALLAST_DATABASE_URL's database {name!r}; "
                          f"it uses a database of its own (--database, default {DEFAULT_NAME})")
    if state == "in use":
        raise DemoRefused(f"database {name!r} is not empty and not a demo database: the demo "
                          f"refuses it (choose another --database)")
    if target.vhost == _production_vhost(settings):
        raise DemoRefused(f"the demo never runs on BALLAST_BROKER_URL's vhost {target.vhost!r}")
    existing = rabbit_admin.vhost(target.vhost, target.broker_url)
    if existing is not None and existing["description"] != VHOST_MARKER:
        raise DemoRefused(f"vhost {target.vhost!r} exists and is not a demo vhost: the demo "
                          f"refuses it (choose another --vhost)")
    if int(urlparse(target.redis_url).path.strip("/")) == _production_redis_db(settings):
        raise DemoRefused("the demo never uses BALLAST_REDIS_URL's db (its scheduler would take "
                          "production's lease); choose another --redis-db")
    return state


def prepare(target: DemoTarget, settings: Settings) -> None:
    """Check, then make the database and the vhost fresh and marked."""
    state = check(target, settings)
    name = target.database
    with psycopg.connect(_libpq_dsn(target.database_url, "postgres"), autocommit=True) as conn:
        if state == "demo":
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        if state in ("demo", "absent"):
            conn.execute(f'CREATE DATABASE "{name}"')
        conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{MARKER}: created by ballast demo, "
                     "dropped and recreated by each run'")
    rabbit_admin.delete_vhost(target.vhost, target.broker_url)
    rabbit_admin.create_vhost(target.vhost, VHOST_MARKER, target.broker_url)


def clean(target: DemoTarget, settings: Settings) -> None:
    """Drop the demo's database and vhost (after the same checks; only a marked database)."""
    state = check(target, settings)
    if state == "demo":
        with psycopg.connect(_libpq_dsn(target.database_url, "postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)')
    rabbit_admin.delete_vhost(target.vhost, target.broker_url)
