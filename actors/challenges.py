"""Treasury balancing (SPEC §1): challenges, shadow personas, treasury matches, settlement.

Commands on ``ballast.challenges``; the fill runs as two steps (persona
assignment on ``ballast.step.personas``, match creation on
``ballast.step.matches``) and resolution hands on to the settlement step
(``ballast.step.settlement``).  Each handoff is written to the outbox in the
committing transaction, with a request id derived from the parent's.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from dramatiq.middleware import TimeLimitExceeded

from domain import challenges as rules
from domain.challenges import Challenge, TreasuryConfig, escrow_account, treasury_account
from domain.errors import InsufficientFunds, LedgerError, Refused
from domain.ledger import Posting
from domain.wallet import WalletChange
from infra import ledger
from infra.alerts import Alert, announce_raised, announce_resolved, raise_alert
from infra.attempts import final_attempt
from infra.challenges import repository as repo
from infra.challenges import settlement as settlement_failures
from infra.challenges import views
from infra.contract.challenges import (
    AssignPersonas,
    ConfigureTreasury,
    CreateTreasuryMatches,
    FillTreasury,
    JoinChallenge,
    OpenChallenge,
    ResolveChallenge,
    SettleChallenge,
)
from infra.contract.operations import SendDailySummary
from infra.logs import get_logger
from infra.messaging import command
from infra.settings import get_settings
from infra.uow import UnitOfWork
from services import wallets

log = get_logger(__name__)

#: Participants settled per transaction; a crash loses at most one batch of work, never pays twice.
SETTLE_BATCH = get_settings().challenge_settle_batch


def child_request_id(parent: str, step: str) -> str:
    """The deterministic request id of a step handed on by ``parent`` (≤ 128 chars)."""
    rid = f"{parent}:{step}"
    return rid if len(rid) <= 128 else f"{step}:" + hashlib.sha256(parent.encode()).hexdigest()


# --- commands -------------------------------------------------------------------------

@command()
def open_challenge(cmd: OpenChallenge, uow: UnitOfWork) -> None:
    """A challenge with a fixed stake per participant opens for joins (until ``closes_at``,
    up to ``max_participants`` when given)."""
    challenge = Challenge(cmd.challenge_id, cmd.title, cmd.currency, cmd.stake, cmd.admin_created,
                          closes_at=cmd.closes_at, max_participants=cmd.max_participants)
    now = repo.open_new(uow.conn, challenge)
    if now is not None:  # new: its terms must make sense (a refusal rolls the insert back)
        challenge.check_new(now)


@command()
def join_challenge(cmd: JoinChallenge, uow: UnitOfWork) -> None:
    """A user wagers the stake on one side; opposite sides pair first come, first served."""
    challenge = repo.get(uow.conn, cmd.challenge_id, lock=True)
    challenge.ensure_open(f"join {cmd.side}")
    # Under the challenge's row lock (read after it): concurrent joins see each other, the cap holds.
    now, participants, joined = repo.join_context(uow.conn, challenge.challenge_id, cmd.user_id)
    if joined:
        raise Refused(f"user {cmd.user_id} already joined challenge {challenge.challenge_id}")
    challenge.ensure_can_join(now, participants)
    wager = WalletChange(cmd.user_id, challenge.currency, -challenge.stake, "wager",
                         reason=f"challenge {challenge.challenge_id} {cmd.side}",
                         performed_by=cmd.user_id,
                         metadata={"challenge_id": challenge.challenge_id, "side": cmd.side})
    txn = wallets.apply_changes(uow, [wager], counter_account=escrow_account(challenge.challenge_id),
                                kind="challenge_join", memo=wager.reason,
                                metadata={"challenge_id": challenge.challenge_id})
    _, yes, no = repo.add_participant_waiting(uow.conn, challenge, cmd.user_id, cmd.side, txn)
    pairs = rules.pair_first_come(yes, no)
    if pairs:
        uow.publish_after_commit(repo.pair_with_events(uow.conn, pairs,
                                                       _pair_events(challenge, pairs)))


@command()
def configure_treasury(cmd: ConfigureTreasury, uow: UnitOfWork) -> None:
    """An admin sets (or changes) how much the treasury may stake on an admin challenge."""
    challenge = repo.get(uow.conn, cmd.challenge_id, lock=True)
    challenge.ensure_admin_created("configure the treasury")
    challenge.ensure_open("configure the treasury")
    current = repo.config(uow.conn, challenge.challenge_id, lock=True) or TreasuryConfig(cmd.max_risk)
    cfg = current.reconfigure(cmd.max_risk, cmd.notes)
    written = repo.save_config_recorded(
        uow.conn, challenge.challenge_id, cfg, cmd.admin_id,
        resolve_keys=[_budget_alert_key(challenge)] if cfg.available >= challenge.stake else [])
    announce_resolved(uow, written.resolved, note=f"max_risk raised to {cfg.max_risk}")


@command()
def fill_treasury(cmd: FillTreasury, uow: UnitOfWork) -> None:
    """An admin asks the treasury to match waiting users on ``side`` with shadow personas."""
    challenge = repo.get(uow.conn, cmd.challenge_id, lock=True)
    challenge.ensure_admin_created("fill")
    challenge.ensure_open("fill")
    cfg = repo.config(uow.conn, challenge.challenge_id)
    if cfg is None:
        raise Refused(f"challenge {challenge.challenge_id} has no treasury config; "
                      "configure_treasury first")
    cfg.ensure_can_fund(challenge.stake, challenge.challenge_id)
    _, message = repo.add_fill_with_next(
        uow.conn, challenge.challenge_id, cmd.side, cmd.match_count, cmd.admin_id, cmd.request_id,
        "assign_personas", {"request_id": child_request_id(cmd.request_id, "personas"),
                            "challenge_id": challenge.challenge_id})
    uow.publish_after_commit([message])


@command()
def resolve_challenge(cmd: ResolveChallenge, uow: UnitOfWork) -> None:
    """The result is known: fills in progress are dropped and settlement is handed on."""
    challenge = repo.get(uow.conn, cmd.challenge_id, lock=True).resolve(cmd.result)
    open_fills, message = repo.resolve_with_next(
        uow.conn, challenge, cmd.resolved_by, "settle_challenge",
        {"request_id": child_request_id(cmd.request_id, "settle"),
         "challenge_id": challenge.challenge_id})
    for fill_id in open_fills:
        _drop_fill(uow, challenge, fill_id, "cancelled", "challenge resolved before the match")
    uow.publish_after_commit([message])


# --- the fill: persona assignment, then match creation --------------------------------

@command()
def assign_personas(cmd: AssignPersonas, uow: UnitOfWork) -> None:
    """Pick the earliest waiting users and unused personas within the budget; hold them."""
    challenge = repo.get(uow.conn, cmd.challenge_id, lock=True)
    # The fill, the budget, the waiting users and the unused personas: one read, after the lock.
    fill, cfg, waiting, personas = repo.assign_context(uow.conn, cmd.fill_id, challenge.challenge_id)
    if fill.status != "requested":
        return
    if challenge.status != "open":
        repo.finish_fill(uow.conn, fill.id, "cancelled", reason=f"challenge {challenge.status}")
        return
    plan = rules.plan_fill(
        challenge_id=challenge.challenge_id, match_count=fill.requested, waiting=waiting,
        unused_personas=personas, available=cfg.available, stake=challenge.stake,
        persona_key=lambda p: p.code)
    written = repo.reserve_assigned(
        uow.conn, fill, plan.pairs, challenge.stake, cfg.reserve(plan.n * challenge.stake),
        plan.n, plan.shortfall, plan.reasons,
        next_actor="create_treasury_matches" if plan.n else None,
        next_kwargs={"request_id": child_request_id(cmd.request_id, "matches"),
                     "challenge_id": challenge.challenge_id, "fill_id": fill.id})
    if plan.shortfall:
        _report_shortfall(uow, challenge, fill, plan)
    uow.publish_after_commit(written.rows)


@command()
def create_treasury_matches(cmd: CreateTreasuryMatches, uow: UnitOfWork) -> None:
    """One transaction: the treasury's stakes into escrow, the matches, the notifications."""
    challenge = repo.get(uow.conn, cmd.challenge_id, lock=True)
    # The fill, its reserved matches and the budget: one read, after the lock.
    fill, current, matches = repo.fill_context(uow.conn, cmd.fill_id, challenge.challenge_id)
    if fill.status != "assigned":
        return
    if challenge.status != "open":
        _drop_fill(uow, challenge, fill.id, "cancelled", f"challenge {challenge.status}")
        return
    amount = len(matches) * challenge.stake
    cfg = current.allocate(amount, len(matches))
    # All of it, or (treasury short) none of it: the stake is posted first, and a refused
    # posting writes nothing, so nothing of the fill is written before it is funded.
    # treasury:{CUR} is every fill's and settlement's account: one statement and the commit
    # follow its lock.
    try:
        txn = ledger.post(
            uow.conn,
            [Posting(treasury_account(challenge.currency), challenge.currency, -amount),
             Posting(escrow_account(challenge.challenge_id), challenge.currency, amount)],
            kind="treasury_stake",
            idempotency_key=f"challenge:{challenge.challenge_id}:fill:{fill.id}",
            memo=f"treasury stakes {len(matches)} match(es) on challenge {challenge.challenge_id}",
            metadata={"challenge_id": challenge.challenge_id, "fill_id": fill.id})
    except InsufficientFunds as exc:
        _treasury_cannot_pay(uow, challenge, fill, amount, str(exc))
        return
    written = repo.activate_created(
        uow.conn, challenge.challenge_id, fill.id, matches, cfg, txn,
        _match_events(challenge, fill, matches, cfg),
        resolve_keys=[f"treasury:underfunded:{challenge.currency}"],
        raise_items=[_budget_alert(challenge, cfg)] if cfg.available < challenge.stake else [])
    uow.publish_after_commit(written.rows)
    announce_resolved(uow, written.resolved, note="a fill was funded")
    announce_raised(uow, [_budget_alert(challenge, cfg)] if written.raised else [], written.raised)


# --- settlement -----------------------------------------------------------------------

@command(transactional=False)
def settle_challenge(cmd: SettleChallenge) -> None:
    """Pay every seat of a resolved challenge, batch by batch; then close the escrow.

    Each batch is one transaction that marks its participants settled, so a
    worker killed between batches resumes where it stopped and pays nobody twice.
    A failure for good (permanent, or transient on the last attempt) leaves the
    challenge ``settlement_failed`` with an alert before the message is dead-lettered.
    """
    try:
        while True:
            with UnitOfWork(actor="settle_challenge", request_id=cmd.request_id, payload=cmd) as uow:
                finished = _settle_next_batch(uow, cmd.challenge_id)
                uow.commit()
            if finished:
                return
    except (Exception, TimeLimitExceeded) as exc:
        if final_attempt(exc):
            try:
                settlement_failures.record_failure(cmd.challenge_id, f"{type(exc).__name__}: {exc}")
            except Exception as unrecorded:  # the database is the cause: the dead letter stays
                log.error("challenge.settlement_failure_unrecorded", error=str(unrecorded))
        raise


def _settle_next_batch(uow: UnitOfWork, challenge_id: str) -> bool:
    """Settle the next batch of seats; the last batch also closes the escrow.  True when done."""
    challenge = repo.get(uow.conn, challenge_id, lock=True)
    if challenge.status == "settled":
        return True
    # settlement_failed: a dead letter replayed before `challenge settle` resumes just the same.
    if challenge.status not in ("resolved", "settlement_failed"):
        raise Refused(f"challenge {challenge_id} is {challenge.status}, not resolved")
    seats = repo.unsettled(uow.conn, challenge_id, SETTLE_BATCH + 1)
    last = len(seats) <= SETTLE_BATCH
    seats = seats[:SETTLE_BATCH]
    outcomes = [(s, rules.settle_user(stake=s.stake, side=s.side, result=challenge.result,
                                      opponent=s.opponent)) for s in seats]
    matches = [(s.match_id, rules.settle_treasury_match(stake=s.stake, user_side=s.side,
                                                        result=challenge.result))
               for s in seats if s.opponent == "treasury"]
    escrow = escrow_account(challenge_id)
    changes = [WalletChange(s.user_id, challenge.currency, o.payout, o.change_kind,
                            reason=f"challenge {challenge_id} {challenge.result}: {o.outcome}",
                            metadata={"challenge_id": challenge_id})
               for s, o in outcomes if o.payout > 0]
    txn = None
    if changes:
        txn = wallets.apply_changes(
            uow, changes, counter_account=escrow, kind="challenge_settlement",
            memo=f"settlement of challenge {challenge_id} ({challenge.result})",
            idempotency_key=f"challenge:{challenge_id}:settle:{seats[0].participant_id}",
            metadata={"challenge_id": challenge_id, "result": challenge.result})
    uow.publish_after_commit(repo.settle_batch(
        uow.conn, outcomes, txn, matches,
        [("challenge.settled", _settled_notice(challenge, seat, outcome), seat.user_id)
         for seat, outcome in outcomes]))
    back = sum(m.payout for _, m in matches)
    if back:  # last: treasury:{CUR} is the hottest account
        ledger.post(uow.conn, [Posting(escrow, challenge.currency, -back),
                               Posting(treasury_account(challenge.currency), challenge.currency, back)],
                    kind="treasury_payout",
                    idempotency_key=f"challenge:{challenge_id}:treasury:{seats[0].participant_id}",
                    memo=f"treasury matches of challenge {challenge_id} ({challenge.result})",
                    metadata={"challenge_id": challenge_id})
    if last:
        _close_settlement(uow, challenge)
    return last


def _settled_notice(challenge: Challenge, seat: repo.Seat, outcome: rules.UserSettlement) -> dict:
    amount, message = rules.settlement_notice(outcome, seat.stake, challenge.currency)
    return {"challenge_id": challenge.challenge_id, "user_id": seat.user_id, "side": seat.side,
            "result": challenge.result, "outcome": outcome.outcome, "amount": amount,
            "credited": outcome.payout, "stake": seat.stake, "currency": challenge.currency,
            "message": message}


def _close_settlement(uow: UnitOfWork, challenge: Challenge) -> None:
    # Settled, and its alerts resolved (a settlement that completed clears its failure
    # alert too, after a retry), with what its report needs (the escrow, the settled matches,
    # the users' outcomes): one statement; the alerts' events and the report: one more.
    left, settled, users, written = repo.close_settlement(
        uow.conn, challenge.challenge_id, escrow_account(challenge.challenge_id),
        [_budget_alert_key(challenge), _personas_alert_key(challenge),
         settlement_failures.alert_key(challenge.challenge_id)])
    if left != 0:
        raise LedgerError(f"escrow of challenge {challenge.challenge_id} holds {left} after "
                          "every seat was settled")
    outcome = rules.treasury_outcome(settled, challenge.stake)
    report = {
        "challenge_id": challenge.challenge_id, "result": challenge.result,
        "currency": challenge.currency, "stake": challenge.stake, "users": users,
        "matches": outcome.matches, "won": outcome.won, "lost": outcome.lost,
        "refunded": outcome.refunded, "won_amount": outcome.won_amount,
        "lost_amount": outcome.lost_amount, "refunded_amount": outcome.refunded_amount,
        "treasury_payout": outcome.payout, "net_pnl": outcome.net_pnl,
        "message": rules.settlement_message(outcome, challenge.currency)}
    announce_resolved(uow, written.resolved, note="challenge settled",
                      also=[("admin.treasury.settlement", report, "admin")])


# --- the daily summary ----------------------------------------------------------------

@command()
def send_daily_summary(cmd: SendDailySummary, uow: UnitOfWork) -> None:
    """The admins' report of one day's treasury activity (default: yesterday, BALLAST_TIMEZONE)."""
    tz = ZoneInfo(get_settings().timezone)
    day = cmd.day or (datetime.now(tz).date() - timedelta(days=1))
    start = datetime.combine(day, datetime.min.time(), tzinfo=tz)
    report = views.daily_summary(uow.conn, start, start + timedelta(days=1))
    uow.emit("admin.treasury.daily_summary",
             {"day": day.isoformat(), "timezone": tz.key, **report}, recipient="admin")


# --- helpers --------------------------------------------------------------------------

def _pair_waiting(uow: UnitOfWork, challenge: Challenge) -> None:
    """Pair whoever waits on both sides, earliest first, and tell both users."""
    counts = repo.waiting_counts(uow.conn, challenge.challenge_id)
    k = min(counts.values())
    if not k:
        return
    pairs = rules.pair_first_come(repo.waiting(uow.conn, challenge.challenge_id, "YES", k),
                                  repo.waiting(uow.conn, challenge.challenge_id, "NO", k))
    repo.pair(uow.conn, pairs)
    uow.emit_many(_pair_events(challenge, pairs))


def _pair_events(challenge: Challenge, pairs) -> list[tuple[str, dict, str]]:
    """Both users of each pair are told (``match.found``)."""
    return [("match.found", {
        "challenge_id": challenge.challenge_id, "user_id": me.user_id, "side": me.side,
        "opponent": them.user_id, "stake": challenge.stake,
        "currency": challenge.currency, "message": rules.matched_message(None)}, me.user_id)
        for yes, no in pairs for me, them in ((yes, no), (no, yes))]


def _match_events(challenge: Challenge, fill: repo.Fill, matches: list[repo.ReservedMatch],
                  cfg: TreasuryConfig) -> list[tuple[str, dict, str]]:
    """Each user matched with a persona is told; the admins get the fill's report."""
    return [("match.found", {
        "challenge_id": challenge.challenge_id, "user_id": m.user_id, "side": m.user_side,
        "opponent": m.persona.display_name, "stake": challenge.stake,
        "currency": challenge.currency, "message": rules.matched_message(m.persona.display_name)},
        m.user_id) for m in matches] + [("admin.treasury.match_created", {
            "challenge_id": challenge.challenge_id, "fill_id": fill.id, "side": fill.side,
            "requested": fill.requested, "created": len(matches),
            "treasury_staked": len(matches) * challenge.stake, "currency": challenge.currency,
            "matches": [{"user_id": m.user_id, "persona": m.persona.code} for m in matches[:100]],
            "max_risk": cfg.max_risk, "allocated": cfg.allocated, "remaining": cfg.remaining,
            "requested_by": fill.admin_id,
            "message": rules.filled_message(len(matches), fill.side)}, "admin")]


def _budget_alert(challenge: Challenge, cfg: TreasuryConfig) -> Alert:
    """The budget of a challenge is used up by its fills."""
    return Alert("treasury_budget_exhausted", "warning",
                 f"treasury budget of challenge {challenge.challenge_id} is used up "
                 f"({cfg.allocated} of {cfg.max_risk})", _budget_alert_key(challenge),
                 {"challenge_id": challenge.challenge_id, "max_risk": cfg.max_risk,
                  "allocated": cfg.allocated})


def _report_shortfall(uow: UnitOfWork, challenge: Challenge, fill: repo.Fill,
                      plan: rules.FillPlan) -> None:
    uow.emit("admin.treasury.fill_shortfall", {
        "challenge_id": challenge.challenge_id, "fill_id": fill.id, "side": fill.side,
        "requested": plan.requested, "assigned": plan.n, "shortfall": plan.shortfall,
        "reasons": list(plan.reasons)}, recipient="admin")
    data = {"challenge_id": challenge.challenge_id, "fill_id": fill.id,
            "requested": plan.requested, "assigned": plan.n}
    if rules.SHORTFALL_PERSONAS in plan.reasons:
        raise_alert(uow, kind="persona_pool_exhausted", severity="warning",
                    subject=f"persona pool exhausted for challenge {challenge.challenge_id}: "
                            f"{plan.shortfall} of {plan.requested} users left waiting",
                    dedupe_key=_personas_alert_key(challenge), data=data)
    if rules.SHORTFALL_BUDGET in plan.reasons:
        raise_alert(uow, kind="treasury_budget_exhausted", severity="warning",
                    subject=f"treasury budget exhausted for challenge {challenge.challenge_id}: "
                            f"{plan.shortfall} of {plan.requested} users left waiting",
                    dedupe_key=_budget_alert_key(challenge), data=data)


def _treasury_cannot_pay(uow: UnitOfWork, challenge: Challenge, fill: repo.Fill, amount: int,
                         reason: str) -> None:
    """Nothing is created; the users wait again and the admins are alerted."""
    _drop_fill(uow, challenge, fill.id, "failed", reason)
    _pair_waiting(uow, challenge)
    raise_alert(uow, kind="treasury_insufficient_funds", severity="critical",
                subject=f"{treasury_account(challenge.currency)} cannot fund a fill of "
                        f"{amount} on challenge {challenge.challenge_id}",
                dedupe_key=f"treasury:underfunded:{challenge.currency}",
                data={"challenge_id": challenge.challenge_id, "fill_id": fill.id,
                      "amount": amount, "reason": reason})
    uow.emit("admin.treasury.fill_failed", {
        "challenge_id": challenge.challenge_id, "fill_id": fill.id, "amount": amount,
        "currency": challenge.currency, "reason": reason}, recipient="admin")


def _drop_fill(uow: UnitOfWork, challenge: Challenge, fill_id: int, status: str, reason: str) -> None:
    held = repo.release(uow.conn, fill_id)
    if held:
        cfg = repo.config(uow.conn, challenge.challenge_id, lock=True)
        repo.save_config(uow.conn, challenge.challenge_id, cfg.release(held))
    repo.finish_fill(uow.conn, fill_id, status, reason=reason)
    log.info("treasury.fill_dropped", fill_id=fill_id, status=status, reason=reason)


def _budget_alert_key(challenge: Challenge) -> str:
    return f"treasury:budget:{challenge.challenge_id}"


def _personas_alert_key(challenge: Challenge) -> str:
    return f"treasury:personas:{challenge.challenge_id}"
