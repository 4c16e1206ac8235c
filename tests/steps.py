"""The treasury and journal steps as the older tests call them (by job id, engine, unit of
work), each one the service handler it names, fed the same validated command."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from types import SimpleNamespace

from infra.contract import parse
from infra.contract.operations import (CancelConversion, CompleteConversion, ConvertManually,
                                       FailConversion, FreezeConversions, SetAutoRebalance,
                                       ThawConversions)
from infra.contract.journal import CloseCycle, LinkPayment, OpenCycle
from infra.contract.treasury import (ApplyConversionCallback, PollConversion, ProbeProviders, RecordBufferFlow,
                                     RunSettlementCycle, SubmitConversion)
from infra.journal import conditions as _journal_conditions  # noqa: F401  (registers them)
from services import treasury_conditions as _treasury_conditions  # noqa: F401
from infra.treasury import store as _store
from infra.treasury.overrides import audit_log
from infra.treasury.cycle import auto_rebalance_enabled
from services.buffers import evaluate_buffer_alerts
from services.jobs import flag_if_stale, schedule_first
from infra.uow import UnitOfWork
from services import buffers, conversions, journal, overrides, providers
from services.conversions import (RESUBMIT_PENDING_AFTER_S, JobBusy, _apply_report,
                                  _call_provider, _decision)
from services.conversions import _prepare_attempt as _prepare


def _rid() -> str:
    return f"test:{uuid.uuid4()}"


def _unit(actor: str, engine=None, request_id: str | None = None) -> UnitOfWork:
    return UnitOfWork(actor=actor, request_id=request_id or _rid(), engine=engine)


def submit(job_id: int, engine=None) -> str:
    cmd = parse(SubmitConversion, {"request_id": f"conversion:{job_id}:submit", "job_id": job_id})
    return conversions.submit_conversion(cmd, _unit("submit_conversion", engine))


def poll(job_id: int, engine=None, *, poll_no: int | None = None) -> bool:
    cmd = parse(PollConversion, {"request_id": _rid(), "job_id": job_id, "poll_no": poll_no})
    return bool(conversions.poll_conversion(cmd, _unit("poll_conversion", engine)))


def poll_all(engine=None, *, request_id: str = "poll") -> int:
    cmd = parse(PollConversion, {"request_id": request_id})
    return conversions.poll_conversion(cmd, _unit("poll_conversion", engine, request_id))


def drive(job_id: int, engine, told, **options) -> bool:
    return conversions.drive(_unit("poll_conversion", engine), job_id, told, **options)


def apply_callback(engine=None):
    """The callback endpoint's ``apply``: the ``apply_conversion_callback`` handler."""
    def apply(job_id: int, key: str, report) -> bool:
        cmd = parse(ApplyConversionCallback, {
            "request_id": f"conversion:{job_id}:callback", "job_id": job_id,
            "idempotency_key": key, **asdict(report)})
        return conversions.apply_conversion_callback(cmd, _unit("apply_conversion_callback", engine))
    return apply


def probe_all(engine=None) -> dict[str, bool]:
    return providers.probe_providers(parse(ProbeProviders, {"request_id": _rid()}),
                                     _unit("probe_providers", engine))


def run_cycle(uow: UnitOfWork, trigger: str, requested_by: str = "scheduler") -> list[int]:
    cmd = parse(RunSettlementCycle, {"request_id": _rid(), "trigger": trigger,
                                     "requested_by": requested_by})
    return buffers.run_settlement_cycle(cmd, uow)


def record_flow(uow: UnitOfWork, account_type: str, amount: int, reference: str) -> int:
    cmd = parse(RecordBufferFlow, {"request_id": _rid(), "account_type": account_type,
                                   "amount": amount, "reference": reference})
    return buffers.record_buffer_flow(cmd, uow)


def set_auto_rebalance(uow: UnitOfWork, enabled: bool, by: str) -> None:
    buffers.set_auto_rebalance(parse(SetAutoRebalance, {"request_id": _rid(), "enabled": enabled,
                                                        "performed_by": by}), uow)


def freeze(uow: UnitOfWork, *, by: str, reason: str) -> dict:
    return overrides.freeze_conversions(parse(FreezeConversions, {
        "request_id": _rid(), "reason": reason, "performed_by": by}), uow)


def thaw(uow: UnitOfWork, *, by: str) -> dict:
    return overrides.thaw_conversions(parse(ThawConversions, {
        "request_id": _rid(), "performed_by": by}), uow)


def convert_manually(uow: UnitOfWork, *, source_type: str, destination_type: str, amount: int,
                     performed_by: str) -> int:
    return overrides.convert_manually(parse(ConvertManually, {
        "request_id": _rid(), "source_type": source_type, "destination_type": destination_type,
        "amount": amount, "performed_by": performed_by}), uow)


def cancel(job_id: int, *, by: str, reason: str, force: bool = False, engine=None):
    return overrides.cancel_conversion(parse(CancelConversion, {
        "request_id": _rid(), "job_id": job_id, "reason": reason, "force": force,
        "performed_by": by}), _unit("cancel_conversion", engine))


def complete_by_hand(job_id: int, *, by: str, reason: str, evidence: str,
                     destination_amount: int, fee_amount: int, engine=None):
    return overrides.complete_conversion(parse(CompleteConversion, {
        "request_id": _rid(), "job_id": job_id, "reason": reason, "evidence": evidence,
        "destination_amount": destination_amount, "fee_amount": fee_amount,
        "performed_by": by}), _unit("complete_conversion", engine))


def fail_by_hand(job_id: int, *, by: str, reason: str, evidence: str, engine=None):
    return overrides.fail_conversion(parse(FailConversion, {
        "request_id": _rid(), "job_id": job_id, "reason": reason, "evidence": evidence,
        "performed_by": by}), _unit("fail_conversion", engine))


def match_run(uow: UnitOfWork, cycle_id: str | None = None, progress=None):
    return journal.match(uow, cycle_id, progress)


def link_by_hand(uow: UnitOfWork, participation_id: str, journal_id: str, admin_id: str) -> None:
    journal.link_payment(parse(LinkPayment, {"request_id": _rid(), "participation_id":
                                             participation_id, "journal_id": journal_id,
                                             "admin_id": admin_id}), uow)


def open_cycle(uow: UnitOfWork, cycle_id: str):
    return journal.open_cycle(parse(OpenCycle, {"request_id": _rid(), "cycle_id": cycle_id}), uow)


def close_cycle(uow: UnitOfWork, cycle_id: str, closed_by: str):
    return journal.close_cycle(parse(CloseCycle, {"request_id": _rid(), "cycle_id": cycle_id,
                                                  "closed_by": closed_by}), uow)


def _prepare_attempt(engine, job_id: int, quotes=None):
    return _prepare(_unit("submit_conversion", engine), job_id, quotes)


submission = SimpleNamespace(submit=submit, JobBusy=JobBusy, _decision=_decision,
                             _prepare_attempt=_prepare_attempt,
                             _call_provider=lambda sub, engine=None: _call_provider(sub))
polling = SimpleNamespace(poll=poll, poll_all=poll_all, drive=drive, probe_all=probe_all,
                          flag_if_stale=flag_if_stale, schedule_first=schedule_first,
                          _apply_report=_apply_report, apply_callback=apply_callback,
                          RESUBMIT_PENDING_AFTER_S=RESUBMIT_PENDING_AFTER_S)
cycle = SimpleNamespace(run_cycle=run_cycle, record_flow=record_flow,
                        set_auto_rebalance=set_auto_rebalance,
                        auto_rebalance_enabled=auto_rebalance_enabled,
                        evaluate_buffer_alerts=evaluate_buffer_alerts)
matching = SimpleNamespace(run=match_run, link_by_hand=link_by_hand, open_cycle=open_cycle,
                           close_cycle=close_cycle, LinkRace=journal.LinkRace,
                           apply_links=journal.apply_links,
                           MATCHER=journal.MATCHER, CURRENCY=journal.CURRENCY)
levers = SimpleNamespace(freeze=freeze, thaw=thaw, frozen=_store.freeze_state,
                         convert_manually=convert_manually, cancel=cancel,
                         complete_by_hand=complete_by_hand, fail_by_hand=fail_by_hand,
                         audit_log=audit_log)
