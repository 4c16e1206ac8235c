"""The HTTP provider adapter against a local fake server (http.server on 127.0.0.1)."""

from __future__ import annotations

import pytest

from domain import conversions as conv
from infra.providers import Order, ProviderRejected, ProviderUnavailable
from infra.providers.http import HttpProvider, make_config
from services import jobs
from tests.steps import submission
from tests.infra.test_treasury_kit import (
    FakeHttpProvider, add_provider, attempts, balance, cycle_now, drive, free_port, job,
    ledger_check, reset, usd, usdc,
)


@pytest.fixture
def fake():
    server = FakeHttpProvider()
    yield server
    server.close()


def adapter(url: str, **kw) -> HttpProvider:
    kw.setdefault("timeout_ms", 500)
    kw.setdefault("backoff_ms", 10)
    return HttpProvider("fake", url, **kw)


ORDER = Order("key-1", "USDC->USD", usdc(1_000))


def test_initiate_sends_the_idempotency_key_and_maps_the_answer(fake):
    report = adapter(fake.url).initiate(ORDER)
    assert (report.state, report.reference) == ("processing", "ord-1")
    assert fake.posts == [("key-1", "key-1")]


def test_server_errors_are_retried_with_the_same_key_and_make_one_order(fake):
    fake.script = ["500", "503"]
    report = adapter(fake.url, retries=2).initiate(ORDER)
    assert report.state == "processing"
    assert fake.posts == [("key-1", "key-1")] * 3
    assert list(fake.orders) == ["key-1"]


def test_a_timeout_is_retried_with_the_same_key_and_the_provider_dedupes(fake):
    fake.script = ["slow"]
    fake.slow_s = 1.0
    report = adapter(fake.url, timeout_ms=300, retries=1).initiate(ORDER)
    assert report.state == "processing"
    assert [k for k, _ in fake.posts] == ["key-1", "key-1"]
    assert len(fake.orders) == 1


def test_a_client_error_is_a_rejection_and_not_retried(fake):
    fake.script = ["422"]
    with pytest.raises(ProviderRejected, match="422"):
        adapter(fake.url, retries=3).initiate(ORDER)
    assert len(fake.posts) == 1


def test_retries_spent_on_server_errors_may_have_reached_the_provider(fake):
    fake.script = ["503"] * 3
    with pytest.raises(ProviderUnavailable) as err:
        adapter(fake.url, retries=2).initiate(ORDER)
    assert err.value.maybe_accepted and len(fake.posts) == 3


def test_connection_refused_provably_never_reached_it():
    with pytest.raises(ProviderUnavailable) as err:
        adapter(f"http://127.0.0.1:{free_port()}", retries=1).initiate(ORDER)
    assert not err.value.maybe_accepted


@pytest.mark.parametrize("word,state", [
    ("accepted", "processing"), ("pending", "processing"), ("processing", "processing"),
    ("settled", "completed"), ("completed", "completed"), ("rejected", "failed"),
    ("expired", "failed"), ("FAILED", "failed"),
])
def test_status_words_map_to_report_states(fake, word, state):
    a = adapter(fake.url)
    a.initiate(ORDER)
    fake.status_words["key-1"] = word
    report = a.status("key-1")
    assert report.state == state
    if state == "completed":
        assert (report.destination_amount, report.fee_amount) == (usd(1_000), 0)


def test_unknown_status_or_non_integer_amounts_are_not_believed(fake):
    a = adapter(fake.url)
    a.initiate(ORDER)
    fake.status_words["key-1"] = "teleported"
    with pytest.raises(ProviderUnavailable, match="unknown status"):
        a.status("key-1")
    fake.orders["key-1"]["net"] = 1000.5
    fake.status_words["key-1"] = "completed"
    with pytest.raises(ProviderUnavailable, match="integer"):
        a.status("key-1")


def test_unknown_order_is_not_found_and_health_follows_the_server(fake):
    a = adapter(fake.url)
    assert a.status("nope").state == conv.NOT_FOUND
    assert a.health()
    fake.healthy = False
    assert not a.health()
    assert not adapter(f"http://127.0.0.1:{free_port()}").health()


def test_config_is_validated():
    from domain.errors import InvalidCommand
    with pytest.raises(InvalidCommand):
        make_config("ftp://x")
    assert make_config("http://x/")["url"] == "http://x"


# --- through the engine ------------------------------------------------------------------

def http_config(url: str, **kw) -> dict:
    return make_config(url, timeout_ms=kw.pop("timeout_ms", 500), retries=kw.pop("retries", 1),
                       backoff_ms=10)


def test_a_job_converts_through_an_http_provider(engine, clean_queues, fake):
    fake.fee_bps, fake.polls_to_finish = 10, 2
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    name = add_provider(engine, kind="http", config=http_config(fake.url))
    [job_id] = cycle_now(engine)
    done = drive(engine, job_id)
    assert (done.status, done.provider) == (conv.COMPLETED, name)
    # 60,000 USD -> 60,000 USDC, 10 bps fee = 60 USDC
    assert (done.destination_amount, done.fee_amount) == (usdc(59_940), usdc(60))
    assert balance(engine, "buffer:system_buffer_usdc") == usdc(5_000) + usdc(59_940)
    assert [k for k, _ in fake.posts] == [attempts(engine, job_id)[0].idempotency_key]
    assert ledger_check(engine)["ok"]


def test_an_unreachable_http_provider_falls_back_to_the_next(engine, clean_queues):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    down = add_provider(engine, priority=1, kind="http",
                        config=http_config(f"http://127.0.0.1:{free_port()}"))
    up = add_provider(engine, priority=2)
    [job_id] = cycle_now(engine)
    submission.submit(job_id, engine)
    assert [(a.provider, a.status) for a in attempts(engine, job_id)] == [
        (down, "error"), (up, "accepted")]


def test_an_http_timeout_whose_order_was_taken_is_kept_not_sent_elsewhere(engine, clean_queues,
                                                                          fake):
    fake.script, fake.slow_s = ["slow", "slow"], 1.0
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    slow = add_provider(engine, priority=1, kind="http",
                        config=http_config(fake.url, timeout_ms=300, retries=1))
    add_provider(engine, priority=2)
    [job_id] = cycle_now(engine)
    submission.submit(job_id, engine)
    assert [(a.provider, a.status) for a in attempts(engine, job_id)] == [(slow, "accepted")]
    assert len(fake.orders) == 1
    assert drive(engine, job_id).status == conv.COMPLETED


def test_a_recovered_attempt_whose_provider_cannot_answer_is_never_sent_elsewhere(engine,
                                                                                  clean_queues):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    gone = add_provider(engine, priority=1, kind="http",
                        config=http_config(f"http://127.0.0.1:{free_port()}"))
    add_provider(engine, priority=2)
    [job_id] = cycle_now(engine)
    submission._prepare_attempt(engine, job_id)  # then the worker died: did the provider get it?
    with pytest.raises(jobs.ProviderUncertain):
        submission.submit(job_id, engine)
    assert [(a.provider, a.status) for a in attempts(engine, job_id)] == [(gone, "submitting")]
    assert job(engine, job_id).status == conv.PENDING
