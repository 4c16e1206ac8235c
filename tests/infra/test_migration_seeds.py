"""Migrations seed literals, never live domain code (issue 11); the seeds are held equal to
the domain's tables here, so a change of one without the other fails.  (The buffers' seed
is held equal to domain.buffers.DEFAULT_THRESHOLDS in tests/infra/test_treasury.py.)"""

from __future__ import annotations

import importlib.util

from domain.guard import TIERS, default_limits
from domain.money import CURRENCIES
from tests.purity import ROOT

VERSIONS = ROOT / "infra" / "db" / "migrations" / "versions"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, VERSIONS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_migration_imports_domain_or_infra_code():
    for path in sorted(VERSIONS.glob("*.py")):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            assert not stripped.startswith(("from domain", "import domain", "from infra",
                                            "import infra")), f"{path.name}: {stripped}"


def test_the_guard_limits_seed_is_the_domain_tier_table():
    seeded = {(t, c): tuple(v) for t, c, *v in load("0002_guard").SEED_LIMITS}
    expected = {(t, c): default_limits(t, c) for t in TIERS for c in CURRENCIES}
    assert set(seeded) == set(expected)
    for key, lim in expected.items():
        assert seeded[key] == (lim.min_balance, lim.max_balance, lim.daily, lim.weekly,
                               lim.warning, lim.critical), key


def test_the_provider_health_view_literals_are_the_domain_rule():
    """v_provider_health (0007) runs domain.providers' rule in SQL with literals of its own."""
    from domain import providers

    m = load("0007_treasury_engine")
    assert (m.HEALTH_MIN_ATTEMPTS, m.HEALTH_MIN_SUCCESS_BPS) \
        == (providers.HEALTH_MIN_ATTEMPTS, providers.HEALTH_MIN_SUCCESS_BPS)
    assert m.PROBE_FRESH_S == providers.PROBE_FRESH.total_seconds()
    assert "interval '24 hours'" in (VERSIONS / "0007_treasury_engine.py").read_text()
    assert providers.HEALTH_WINDOW.total_seconds() == 24 * 3600
