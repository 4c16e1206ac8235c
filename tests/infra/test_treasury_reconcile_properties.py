"""Whatever providers, operators and the engine do to jobs, the books reconcile (property)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from domain.errors import BallastError
from infra.treasury import reconcile
from tests.steps import polling, submission, levers
from infra.uow import UnitOfWork
from tests.harness import uid
from tests.infra.test_treasury_kit import (
    add_provider, cycle_now, ledger_check, reset, set_mode, sim, usd, usdc,
)

pytestmark = pytest.mark.usefixtures("clean_queues")

MODES = ("none", "reject", "error", "timeout", "stick", "fail_late")
ACTIONS = ("submit", "poll", "freeze", "thaw", "complete", "fail", "cancel", "mode")
MONEY_CHECKS = ("transit", "job_ledger", "orphan_transaction", "orphaned_job")


def _thaw(engine) -> None:
    with engine.connect() as conn:
        if not levers.frozen(conn):
            return
    with UnitOfWork(actor="t", request_id=uid(), engine=engine) as uow:
        levers.thaw(uow, by="test")
        uow.commit()


def _act(engine, action: str, job_id: int, provider: str, mode: str) -> None:
    if action == "submit":
        submission.submit(job_id, engine)
    elif action == "poll":
        polling.poll(job_id, engine)
    elif action in ("freeze", "thaw"):
        with UnitOfWork(actor="t", request_id=uid(), engine=engine) as uow:
            if action == "freeze":
                levers.freeze(uow, by="prop", reason="drill")
            else:
                levers.thaw(uow, by="prop")
            uow.commit()
    elif action == "complete":
        levers.complete_by_hand(job_id, by="prop", reason="confirmed", evidence="REF-1",
                                   destination_amount=123_456, fee_amount=789, engine=engine)
    elif action == "fail":
        levers.fail_by_hand(job_id, by="prop", reason="never executed", evidence="REF-2",
                               engine=engine)
    elif action == "cancel":
        levers.cancel(job_id, by="prop", reason="drill", force=True, engine=engine)
    else:
        set_mode(engine, provider, mode)


@settings(max_examples=15)
@given(st.lists(st.sampled_from(MODES), min_size=2, max_size=2),
       st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(0, 1), st.integers(0, 1),
                          st.sampled_from(MODES)), min_size=1, max_size=14))
def test_whatever_happens_to_jobs_transit_and_every_job_s_ledger_reconcile(engine, modes, script):
    _thaw(engine)
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    names = [add_provider(engine, priority=i + 1, config=sim(fail_mode=m, latency_polls=2))
             for i, m in enumerate(modes)]
    [first] = cycle_now(engine)
    with UnitOfWork(actor="t", request_id=uid(), engine=engine) as uow:
        second = levers.convert_manually(uow, source_type="broker_operational",
                                       destination_type="system_buffer_usdc", amount=usd(1_000),
                                       performed_by="prop")
        uow.commit()
    ids = [first, second]
    try:
        for action, which, provider, mode in script:
            try:
                _act(engine, action, ids[which], names[provider], mode)
            except BallastError:  # refused levers (frozen already, nothing to complete...)
                pass
    finally:
        _thaw(engine)
    with engine.connect() as conn:
        found = [d for d in reconcile.differences(conn, {}) if d.check in MONEY_CHECKS
                 and (d.check not in ("job_ledger", "orphaned_job")
                      or d.subject in {f"job {i}" for i in ids})]
    assert found == []
    assert ledger_check(engine)["ok"]
