"""The operator commands (``ballast.operations``), called in-process on the run's database:
what the console sends when an operator acknowledges an alert or pauses a provider."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from domain.errors import BallastError, InvalidCommand, Refused
from tests.harness import uid


@pytest.fixture(scope="module")
def acts():
    from actors import alerts, treasury  # registers the actors on the run's broker

    return {"ack": alerts.acknowledge_alert, "status": treasury.set_provider_status,
            "auto": treasury.set_auto_rebalance}


def open_alert(engine) -> int:
    from infra.alerts import raise_alert
    from infra.uow import UnitOfWork

    with UnitOfWork() as uow:
        alert_id = raise_alert(uow, kind="ops_test", severity="info", subject="test",
                               dedupe_key=uid("ops-test:"))
        uow.commit()
    return alert_id


def test_acknowledge_alert_records_who_and_refuses_a_second_time(engine, acts):
    alert_id = open_alert(engine)
    acts["ack"].fn(request_id=uid("r"), alert_id=alert_id, acknowledged_by="ada")
    with engine.connect() as conn:
        row = conn.execute(text("SELECT status, acknowledged_by FROM alerts WHERE id = :i"),
                           {"i": alert_id}).one()
    assert (row.status, row.acknowledged_by) == ("acknowledged", "ada")
    with pytest.raises(Refused, match="is acknowledged, not open"):
        acts["ack"].fn(request_id=uid("r"), alert_id=alert_id, acknowledged_by="bob")


def test_acknowledge_alert_refuses_bad_input(acts):
    with pytest.raises(InvalidCommand, match="alert_id"):
        acts["ack"].fn(request_id=uid("r"), alert_id=0, acknowledged_by="ada")


def test_set_provider_status_pauses_and_resumes(engine, acts):
    from infra.treasury import store

    name = uid("prov")
    with engine.begin() as conn:
        store.add_provider(conn, store.ProviderRow(name, "simulated", 9, "active",
                                                   ("USD->USDC",), 0, None, None, {}, 0, 0))

    def status():
        with engine.connect() as conn:
            return conn.execute(text("SELECT status FROM conversion_providers WHERE name = :n"),
                                {"n": name}).scalar_one()

    acts["status"].fn(request_id=uid("r"), name=name, status="paused", performed_by="ada")
    assert status() == "paused"
    acts["status"].fn(request_id=uid("r"), name=name, status="active", performed_by="ada")
    assert status() == "active"
    with pytest.raises(InvalidCommand, match="status"):
        acts["status"].fn(request_id=uid("r"), name=name, status="gone", performed_by="ada")
    with pytest.raises(BallastError):
        acts["status"].fn(request_id=uid("r"), name=uid("nobody"), status="paused",
                          performed_by="ada")


def test_set_auto_rebalance_freezes_and_resumes_scheduled_cycles(engine, acts):
    from tests.steps import cycle

    def enabled():
        with engine.connect() as conn:
            return cycle.auto_rebalance_enabled(conn)

    try:
        acts["auto"].fn(request_id=uid("r"), enabled=False, performed_by="ada")
        assert enabled() is False
    finally:
        acts["auto"].fn(request_id=uid("r"), enabled=True, performed_by="ada")
    assert enabled() is True
    with pytest.raises(InvalidCommand, match="enabled"):
        acts["auto"].fn(request_id=uid("r"), enabled="no", performed_by="ada")
