"""The operator's levers on conversions on the fake unit of work: freeze and thaw, convert,
cancel, complete or fail by hand, and a verified callback (no database, no broker)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from domain import conversions as conv
from domain.buffers import Thresholds
from domain.errors import Refused
from infra.contract import parse
from infra.contract.operations import (CancelConversion, CompleteConversion, ConvertManually,
                                       FailConversion, FreezeConversions, ReportCustody,
                                       ThawConversions)
from infra.contract.treasury import ApplyConversionCallback
from infra.treasury.store import Attempt, ProviderRow
from infra.uow_fake import FakeUnitOfWork
from services import buffers, conversions, overrides

BROKER, USDC = "broker_operational", "system_buffer_usdc"


def _uow() -> FakeUnitOfWork:
    uow = FakeUnitOfWork(actor="lever", request_id="r")
    uow.buffers.thresholds[BROKER] = Thresholds(1_000, 2_000, 100_000, 100)
    uow.buffers.thresholds[USDC] = Thresholds(1_000, 2_000, 100_000, 100)
    uow.ledger.balance["buffer:broker_operational"] = 50_000
    return uow


def _convert(amount: int) -> ConvertManually:
    return parse(ConvertManually, {"request_id": "c", "source_type": BROKER,
                                   "destination_type": USDC, "amount": amount,
                                   "performed_by": "ops"})


def test_a_manual_conversion_is_a_pending_job_handed_to_submission():
    uow = _uow()
    with uow:
        job_id = overrides.convert_manually(_convert(10_000), uow)
        uow.commit()
    job = uow.conversions.jobs[job_id]
    assert (job.kind, job.direction, job.status, job.requested_by) == (
        "manual", "USD->USDC", conv.PENDING, "ops")
    assert uow.sent == [("submit_conversion", 0, {"request_id": f"conversion:{job_id}:submit",
                                                  "job_id": job_id})]


def test_a_manual_conversion_that_would_take_the_source_below_its_min_is_refused():
    uow = _uow()
    with pytest.raises(Refused, match="cannot convert"), uow:
        overrides.convert_manually(_convert(49_500), uow)
    assert uow.conversions.jobs == {} and uow.sent == []


def test_a_freeze_refuses_new_conversions_until_thawed_and_the_thaw_resubmits_pending_jobs():
    uow = _uow()
    with uow:
        pending = overrides.convert_manually(_convert(10_000), uow)
        state = overrides.freeze_conversions(parse(FreezeConversions, {
            "request_id": "f", "reason": " incident 42 ", "performed_by": "alice"}), uow)
        uow.commit()
    assert (state["frozen"], state["by"], state["reason"]) == (True, "alice", "incident 42")
    assert uow.events[-1][0] == "conversion.frozen"
    with pytest.raises(Refused, match="frozen by alice"), uow:
        overrides.convert_manually(_convert(1_000), uow)
    with pytest.raises(Refused, match="frozen already"), uow:
        overrides.freeze_conversions(parse(FreezeConversions, {
            "request_id": "f2", "reason": "again", "performed_by": "alice"}), uow)
    with uow:
        thawed = overrides.thaw_conversions(parse(ThawConversions, {
            "request_id": "t", "performed_by": "bob"}), uow)
        uow.commit()
    assert thawed["pending_resubmitted"] == 1 and uow.sent[-1][2]["job_id"] == pending
    assert [lever["action"] for lever in uow.conversions.levers] == ["freeze", "thaw"]
    with pytest.raises(Refused, match="not frozen"), uow:
        overrides.thaw_conversions(parse(ThawConversions, {
            "request_id": "t2", "performed_by": "bob"}), uow)


def _cancel(job_id: int, request_id: str = "x", **given) -> CancelConversion:
    return parse(CancelConversion, {"request_id": request_id, "job_id": job_id, "reason": "stuck",
                                    "performed_by": "ops", **given})


def test_a_cancelled_job_is_recorded_once_and_a_second_cancel_is_refused():
    uow = _uow()
    with uow:
        job_id = overrides.convert_manually(_convert(10_000), uow)
        uow.commit()
    uow.payload = _cancel(job_id)  # what the actor's unit of work claims
    job = overrides.cancel_conversion(_cancel(job_id), uow)
    assert job.status == conv.CANCELLED and job.failure_reason == "cancelled by ops: stuck"
    assert overrides.cancel_conversion(_cancel(job_id), uow) is None  # the same request
    uow.request_id, uow.payload = "another", _cancel(job_id, "another")
    with pytest.raises(Refused, match="cancelled already"):
        overrides.cancel_conversion(_cancel(job_id, "another"), uow)


def test_a_custody_report_is_recorded_with_who_reported_it():
    uow = _uow()
    with uow:
        doc = buffers.report_custody(parse(ReportCustody, {
            "request_id": "k", "account_type": USDC, "balance": 7, "performed_by": "chain"}), uow)
        uow.commit()
    assert (doc["account_type"], doc["balance"], doc["reported_by"]) == (USDC, 7, "chain")


def _with_provider(uow: FakeUnitOfWork, job_id: int, status: str = "accepted"):
    """The job handed to provider ``sim``: its transit moved, the attempt ``status``."""
    uow.providers.rows["sim"] = ProviderRow("sim", "simulated", 1, "active",
                                            ("USD->USDC",), 0, None, None, {}, 0, 0)
    job = uow.conversions.jobs[job_id]
    uow.ledger.balance["buffer:broker_operational"] -= job.source_amount
    uow.ledger.balance["transit:USD"] = job.source_amount
    uow.conversions.jobs[job_id] = replace(job, status=conv.SUBMITTED, provider="sim",
                                           transit_moved=True, attempts=1)
    uow.conversions.attempt_rows[job_id] = [Attempt(1, job_id, 1, "sim", f"k{job_id}",
                                                    job.source_amount, status, None, None,
                                                    job.created_at)]


def _held_job() -> tuple[FakeUnitOfWork, int]:
    uow = _uow()
    with uow:
        job_id = overrides.convert_manually(_convert(10_000), uow)
        uow.commit()
    _with_provider(uow, job_id)
    return uow, job_id


def test_a_job_completed_by_hand_posts_what_the_provider_delivered_and_is_audited():
    uow, job_id = _held_job()
    cmd = parse(CompleteConversion, {"request_id": "c", "job_id": job_id, "reason": "by phone",
                                     "evidence": "CASE-1", "destination_amount": 9_950,
                                     "fee_amount": 25, "performed_by": "ops"})
    uow.payload = cmd
    job = overrides.complete_conversion(cmd, uow)
    assert (job.status, job.destination_amount, job.fee_amount) == (conv.COMPLETED, 9_950, 25)
    assert uow.ledger.balance["transit:USD"] == 0
    assert uow.ledger.balance["buffer:system_buffer_usdc"] == 9_950
    assert uow.ledger.balance["fees:conversion:USDC"] == 25
    assert uow.conversions.levers[-1]["action"] == "complete"
    assert uow.providers.rows["sim"].success_count == 1
    assert [e[0] for e in uow.events][-1] == "conversion.completed"


def test_a_job_no_provider_holds_cannot_be_completed_by_hand():
    uow = _uow()
    with uow:
        job_id = overrides.convert_manually(_convert(10_000), uow)
        uow.commit()
    cmd = parse(CompleteConversion, {"request_id": "c", "job_id": job_id, "reason": "r",
                                     "evidence": "e", "destination_amount": 1, "fee_amount": 0,
                                     "performed_by": "ops"})
    uow.payload = cmd
    with pytest.raises(Refused, match="fail it instead"):
        overrides.complete_conversion(cmd, uow)
    assert uow.conversions.jobs[job_id].status == conv.PENDING


def test_a_job_failed_by_hand_returns_its_transit_and_alerts():
    uow, job_id = _held_job()
    cmd = parse(FailConversion, {"request_id": "f", "job_id": job_id, "reason": "never executed",
                                 "evidence": "CASE-2", "performed_by": "ops"})
    uow.payload = cmd
    job = overrides.fail_conversion(cmd, uow)
    assert job.status == conv.FAILED and "never executed" in job.failure_reason
    assert uow.ledger.balance["transit:USD"] == 0
    assert uow.ledger.balance["buffer:broker_operational"] == 50_000
    assert f"conversion:failed:{job_id}" in uow.alerts.open


def test_a_held_job_is_cancelled_only_with_force():
    uow, job_id = _held_job()
    uow.payload = _cancel(job_id)
    with pytest.raises(Refused, match="use --force"):
        overrides.cancel_conversion(_cancel(job_id), uow)
    uow.request_id, uow.payload = "forced", _cancel(job_id, "forced", force=True)
    job = overrides.cancel_conversion(_cancel(job_id, "forced", force=True), uow)
    assert job.status == conv.CANCELLED
    assert uow.conversions.attempt_rows[job_id][0].status == "abandoned"
    assert uow.ledger.balance["buffer:broker_operational"] == 50_000


def test_a_verified_callback_drives_its_job_like_a_poll():
    uow, job_id = _held_job()
    uow.providers.clients["sim"] = object()  # never asked: the callback told
    other = parse(ApplyConversionCallback, {"request_id": "cb", "job_id": job_id,
                                            "idempotency_key": "another", "state": "failed"})
    assert conversions.apply_conversion_callback(other, uow) is False
    told = parse(ApplyConversionCallback, {"request_id": "cb", "job_id": job_id,
                                           "idempotency_key": f"k{job_id}", "state": "completed",
                                           "reference": "ord-1", "destination_amount": 9_990,
                                           "fee_amount": 10})
    assert conversions.apply_conversion_callback(told, uow) is True
    assert uow.conversions.jobs[job_id].status == conv.COMPLETED
    assert uow.ledger.balance["buffer:system_buffer_usdc"] == 9_990
