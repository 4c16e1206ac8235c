"""Fixtures on the real services: the run's own database, vhost and Redis db."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from tests import harness
from tests.purity import is_pure_run

# Property tests hit a real database on a 2-core machine: no per-example deadline.
# In CI the examples are derandomized, so a submission's run is reproducible.
settings.register_profile("ballast", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", parent=settings.get_profile("ballast"), derandomize=True)
settings.load_profile("ci" if os.getenv("CI") else "ballast")

_ENV: harness.TestEnv | None = None


def pytest_configure(config):
    global _ENV
    from infra.services import unreachable

    if is_pure_run(list(config.invocation_params.args)):
        return  # tests/domain only: no service is needed, none is touched
    down = unreachable()
    if down:
        raise pytest.UsageError("\n".join(down))
    _ENV = harness.create_env()
    harness.activate(_ENV)


def pytest_unconfigure(config):
    if _ENV is not None:
        harness.destroy_env(_ENV)


@pytest.fixture(scope="session")
def env() -> harness.TestEnv:
    if _ENV is None:
        pytest.fail("this test needs the services, but the run was started as a pure run "
                    "(tests/purity.py): move it out of the pure directories")
    return _ENV


@pytest.fixture(scope="session")
def engine(env):
    from infra.db.engine import get_engine

    return get_engine(env.database_url)


@pytest.fixture
def clean_queues(env):
    """Empty every queue of the run's vhost before (and after) the test."""
    harness.purge_all(env)
    yield
    harness.purge_all(env)


@pytest.fixture
def worker(env, clean_queues):
    """One real worker process on every queue, stopped after the test."""
    w = harness.Worker(env, processes=1, threads=4).start()
    yield w
    w.stop()


@pytest.fixture
def events(env):
    tap = harness.EventTap(env)
    yield tap
    tap.close()


@pytest.fixture
def empty_journal(engine):
    """Matching is global (every unlinked payment, every planned cycle): start empty."""
    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(text(
            "DELETE FROM journal_payment_links; DELETE FROM journal_entries; "
            "DELETE FROM journal_participations; DELETE FROM journal_cycles; "
            "DELETE FROM journal_characters; "
            "UPDATE alerts SET status = 'resolved' WHERE dedupe_key LIKE 'journal:%'"))
