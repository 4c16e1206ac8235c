"""The pure tests run with no service up (issue 11): `pytest tests/domain` starts no
database, vhost or Redis db and does not even look for the services."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.purity import ROOT, is_pure_run


def test_only_paths_under_tests_domain_or_the_import_rules_make_a_pure_run():
    assert is_pure_run(["tests/domain"])
    assert is_pure_run(["tests/test_imports.py", "tests/domain/test_accounts.py"])
    assert is_pure_run(["-q", "tests/domain/test_ledger_rules.py::test_x", "-x"])
    assert not is_pure_run([])  # the default run (testpaths = tests)
    assert not is_pure_run(["tests"])
    assert not is_pure_run(["tests/domain", "tests/infra/test_ledger.py"])
    assert not is_pure_run(["-k", "ledger"])  # an expression is not a path


def test_domain_tests_pass_with_every_service_unreachable():
    dead = {  # port 9 (discard) has no listener here: every connection is refused
        "BALLAST_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:9/nothing",
        "BALLAST_BROKER_URL": "amqp://guest:guest@127.0.0.1:9/%2F",
        "BALLAST_REDIS_URL": "redis://127.0.0.1:9/0",
        "BALLAST_TEST_PG": "postgres@127.0.0.1:9",
        "BALLAST_TEST_AMQP": "guest:guest@127.0.0.1:9",
    }
    env = {**os.environ, **dead}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/domain/test_ledger_rules.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert " passed" in done.stdout
    # …and the same environment makes a run that needs the services refuse to start.
    refused = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/infra/test_ledger.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
