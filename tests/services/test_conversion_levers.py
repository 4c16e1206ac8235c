"""The operator's levers on conversions on the fake unit of work: freeze and thaw, convert
and cancel by hand (no database, no broker)."""

from __future__ import annotations

import pytest

from domain import conversions as conv
from domain.buffers import Thresholds
from domain.errors import Refused
from infra.contract import parse
from infra.contract.operations import (CancelConversion, ConvertManually, FreezeConversions,
                                       ReportCustody, ThawConversions)
from infra.uow_fake import FakeUnitOfWork
from services import buffers, overrides

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
