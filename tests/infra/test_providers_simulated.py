"""The simulated provider: its books in the database, its failure modes."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from domain.errors import InvalidCommand
from infra.providers import Order, ProviderRejected, ProviderUnavailable, build
from tests.harness import uid
from tests.infra.test_treasury_kit import add_provider, set_mode, sim, usd, usdc


def provider(engine, **config):
    name = add_provider(engine, config=sim(**config))
    with engine.connect() as conn:
        row = conn.execute(text("SELECT config FROM conversion_providers WHERE name = :n"),
                           {"n": name}).scalar_one()
    return name, build(name, "simulated", row, engine)


def order(amount=usd(1_000)):
    return Order(uid("k"), "USD->USDC", amount)


def orders_of(engine, name):
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM simulated_provider_orders WHERE provider = :p"),
                            {"p": name}).scalar_one()


def test_completes_after_latency_polls_at_its_rate_and_fee(engine):
    name, p = provider(engine, rate_ppm=1_002_000, fee_bps=30, latency_polls=2)
    o = order()
    assert p.initiate(o).state == "processing"
    assert p.status(o.idempotency_key).state == "processing"
    done = p.status(o.idempotency_key)
    # 1,000 USD at 1.002 = 1,002 USDC; fee 30 bps = 3.006 USDC
    assert (done.state, done.destination_amount, done.fee_amount) == (
        "completed", usdc(1_002) - 3_006_000, 3_006_000)
    assert p.status(o.idempotency_key) == done  # stays completed


def test_one_key_is_one_order_and_its_books_are_shared_by_every_instance(engine):
    name, p = provider(engine)
    o = order()
    p.initiate(o)
    p.initiate(o)
    assert orders_of(engine, name) == 1
    again = build(name, "simulated", sim(), engine)  # another worker process, say
    assert again.status(o.idempotency_key).state == "completed"
    with pytest.raises(ProviderRejected, match="reused"):
        p.initiate(Order(o.idempotency_key, "USD->USDC", usd(2_000)))


def test_reject_and_error_record_nothing(engine):
    name, p = provider(engine, fail_mode="reject")
    with pytest.raises(ProviderRejected):
        p.initiate(order())
    set_mode(engine, name, "error")
    with pytest.raises(ProviderUnavailable):
        p.initiate(order())
    assert orders_of(engine, name) == 0
    assert not p.health()


def test_timeout_takes_the_order_but_loses_the_answer(engine):
    name, p = provider(engine, fail_mode="timeout")
    o = order()
    with pytest.raises(ProviderUnavailable) as err:
        p.initiate(o)
    assert err.value.maybe_accepted
    assert p.status(o.idempotency_key).state == "completed"  # it did take it


def test_stick_holds_until_the_mode_changes_and_fail_late_fails(engine):
    name, p = provider(engine, fail_mode="stick", latency_polls=0)
    o = order()
    p.initiate(o)
    for _ in range(5):
        assert p.status(o.idempotency_key).state == "processing"
    set_mode(engine, name, "fail_late")
    assert p.status(o.idempotency_key).state == "failed"
    set_mode(engine, name, "none")
    assert p.status(o.idempotency_key).state == "failed"  # final is final
    assert p.status("never-sent").state == "not_found"


def test_config_is_validated():
    with pytest.raises(InvalidCommand):
        sim(fail_mode="explode")
    with pytest.raises(InvalidCommand):
        sim(fee_bps=10_000)
