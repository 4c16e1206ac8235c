"""Bring a database to head: create it if missing, then run Alembic."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from infra.settings import get_settings

MIGRATIONS = Path(__file__).parent / "migrations"


def _libpq_dsn(url: str, database: str) -> str:
    u = make_url(url).set(drivername="postgresql", database=database)
    return u.render_as_string(hide_password=False)


def ensure_database(url: str | None = None) -> bool:
    """Create the database named by ``url`` if it does not exist. True if created."""
    url = url or get_settings().database_url
    name = make_url(url).database
    with psycopg.connect(_libpq_dsn(url, "postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        conn.execute(f'CREATE DATABASE "{name}"')
        return True


def drop_database(url: str) -> None:
    name = make_url(url).database
    with psycopg.connect(_libpq_dsn(url, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _pending(cfg: Config, conn) -> list[str]:
    """The revisions between the database's and head, oldest first."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(cfg)
    current = MigrationContext.configure(conn).get_current_revision()
    revs = [r.revision for r in script.iterate_revisions("head", current)]
    return list(reversed(revs))


def upgrade(url: str | None = None, progress: Callable[..., None] | None = None) -> str:
    """Create the database if needed and migrate it to head. Returns the revision.

    ``progress(n, total=...)``, when given, is told how many revisions are to apply, then
    each one applied (they are applied one at a time, in the one transaction)."""
    url = url or get_settings().database_url
    ensure_database(url)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            # Serialise concurrent `ballast migrate` runs (compose starts several).
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7340217)")
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            if progress is None:
                command.upgrade(cfg, "head")
            else:  # one revision at a time, in the same transaction, to report each
                pending = _pending(cfg, conn)
                progress(0, total=len(pending))
                for rev in pending:
                    command.upgrade(cfg, rev)
                    progress(1)
            # The operator views count daily volume from midnight in BALLAST_TIMEZONE too.
            conn.exec_driver_sql(
                "INSERT INTO treasury_settings (key, value, updated_by) "
                "VALUES ('timezone', to_jsonb(CAST(%(z)s AS text)), 'migrate') "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                {"z": get_settings().timezone})
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision() or ""
    finally:
        engine.dispose()
