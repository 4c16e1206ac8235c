"""Treasury balancing (SPEC §1): challenges, shadow personas, treasury matches, settlement.

    open_challenge            a challenge with a fixed stake opens for joins
    join_challenge            a user wagers the stake on a side; opposite sides pair first come
    configure_treasury        an admin sets how much the treasury may stake on a challenge
    fill_treasury             an admin asks for a fill: persona assignment is handed on
    assign_personas           the earliest waiting users get unused personas, within budget
    create_treasury_matches   the treasury stakes, the matches, the notifications: all or none
    resolve_challenge         the result is known: fills in progress are dropped, settlement next
    settle_challenge          every seat paid, batch by batch; the escrow ends at zero
    record_settlement_failure a settlement that failed for good is left visible, with an alert
    retry_challenge_settlement the operator retries it: resolved again, settlement handed on
    send_daily_summary        the admins' report of a day's treasury activity

Each handoff is written to the outbox in the committing transaction, with a request id
derived from the parent's (``domain.request_ids.next_step``).  The I/O is the unit of work's:
``uow.challenges`` (``infra/challenges/repository.py``), ``uow.wallets``, ``uow.ledger``,
``uow.alerts``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Sequence
from zoneinfo import ZoneInfo

from domain import challenges as rules
from domain.challenges import Challenge, TreasuryConfig, escrow_account, treasury_account
from domain.errors import InsufficientFunds, Refused
from domain.ledger import Posting
from domain.request_ids import next_step
from domain.wallet import WalletChange
from infra import faults
from infra.alerts import Alert
from infra.challenges.repository import Fill, ReservedMatch, Seat
from infra.contract.challenges import (
    AssignPersonas,
    ConfigureTreasury,
    CreateTreasuryMatches,
    FillTreasury,
    JoinChallenge,
    OpenChallenge,
    ResolveChallenge,
    RetryChallengeSettlement,
    SettleChallenge,
)
from infra.contract.operations import SendDailySummary
from infra.logs import get_logger
from infra.settings import get_settings
from infra.uow import UnitOfWork
from services import payouts, wallets

log = get_logger(__name__)

#: Seats per ledger transaction of a settlement (the whole settlement is one database
#: transaction: ``services/payouts.py``).
SETTLE_BATCH = get_settings().challenge_settle_batch


# --- commands -------------------------------------------------------------------------

def open_challenge(cmd: OpenChallenge, uow: UnitOfWork) -> None:
    """A challenge with a fixed stake per participant opens for joins (until ``closes_at``,
    up to ``max_participants`` when given)."""
    challenge = Challenge(cmd.challenge_id, cmd.title, cmd.currency, cmd.stake, cmd.admin_created,
                          closes_at=cmd.closes_at, max_participants=cmd.max_participants)
    now = uow.challenges.open_new(challenge)
    if now is not None:  # new: its terms must make sense (a refusal rolls the insert back)
        challenge.check_new(now)


def join_challenge(cmd: JoinChallenge, uow: UnitOfWork) -> None:
    """A user wagers the stake on one side; opposite sides pair first come, first served."""
    challenge = uow.challenges.get(cmd.challenge_id, lock=True)
    challenge.ensure_open(f"join {cmd.side}")
    # Under the challenge's row lock (read after it): concurrent joins see each other, the cap holds.
    now, participants, joined = uow.challenges.join_context(challenge.challenge_id,
                                                                 [cmd.user_id])
    if joined:
        raise Refused(f"user {cmd.user_id} already joined challenge {challenge.challenge_id}")
    challenge.ensure_can_join(now, participants)
    wager = _wager(challenge, cmd)
    txn = wallets.apply_changes(uow, [wager],
                                counter_account=escrow_account(challenge.challenge_id),
                                kind="challenge_join", memo=wager.reason,
                                metadata={"challenge_id": challenge.challenge_id})
    yes, no = uow.challenges.add_participants_waiting(challenge, [(cmd.user_id, cmd.side, txn)])
    pairs = rules.pair_first_come(yes, no)
    if pairs:
        uow.challenges.pair(pairs, _pair_events(challenge, pairs))


def join_group(uow: UnitOfWork, cmds: Sequence[JoinChallenge]) -> list[None]:
    """Several joins of one challenge, of distinct users (a group commit:
    ``infra.group_commit``), each checked and taking effect as ``join_challenge`` would one
    after the other — set-wise: the challenge locked once, who already joined read once,
    every stake posted as its own ledger transaction with its audit line and event in one
    statement (``wallets.apply_each``), the participants inserted and paired in one more.
    Any refusal raises (the group rolls back and each join runs alone)."""
    challenge = uow.challenges.get(cmds[0].challenge_id, lock=True)
    if any(c.challenge_id != challenge.challenge_id for c in cmds):
        raise ValueError("a join group is of one challenge")
    now, participants, joined = uow.challenges.join_context(
        challenge.challenge_id, [c.user_id for c in cmds])
    stakes = []
    for n, cmd in enumerate(cmds):
        challenge.ensure_open(f"join {cmd.side}")
        if cmd.user_id in joined:
            raise Refused(f"user {cmd.user_id} already joined challenge {challenge.challenge_id}")
        challenge.ensure_can_join(now, participants + n)
        wager = _wager(challenge, cmd)
        stakes.append((wager, escrow_account(challenge.challenge_id), wager.reason,
                       {"challenge_id": challenge.challenge_id}))
    txns = wallets.apply_each(uow, stakes, kind="challenge_join")
    yes, no = uow.challenges.add_participants_waiting(
        challenge, [(c.user_id, c.side, txn) for c, txn in zip(cmds, txns)])
    pairs = rules.pair_first_come(yes, no)
    if pairs:
        uow.challenges.pair(pairs, _pair_events(challenge, pairs))
    return [None] * len(cmds)


def _wager(challenge: Challenge, cmd: JoinChallenge) -> WalletChange:
    return WalletChange(cmd.user_id, challenge.currency, -challenge.stake, "wager",
                        reason=f"challenge {challenge.challenge_id} {cmd.side}",
                        performed_by=cmd.user_id,
                        metadata={"challenge_id": challenge.challenge_id, "side": cmd.side})


def join_user(cmd: JoinChallenge) -> str:
    """No two joins of one user in a group (``join_group``)."""
    return cmd.user_id


def join_partition(cmd: JoinChallenge) -> str:
    """Joins of one challenge are grouped together (``infra.group_commit``): each locks
    the challenge's row, so a group takes it once instead of queueing for it (and writes
    them set-wise: ``join_group``)."""
    return cmd.challenge_id


def configure_treasury(cmd: ConfigureTreasury, uow: UnitOfWork) -> None:
    """An admin sets (or changes) how much the treasury may stake on an admin challenge."""
    challenge = uow.challenges.get(cmd.challenge_id, lock=True)
    challenge.ensure_admin_created("configure the treasury")
    challenge.ensure_open("configure the treasury")
    current = (uow.challenges.config(challenge.challenge_id, lock=True)
               or TreasuryConfig(cmd.max_risk))
    cfg = current.reconfigure(cmd.max_risk, cmd.notes)
    funded = cfg.funds(challenge.stake)  # the budget alert, if any, clears with the change
    written = uow.challenges.configure(
        challenge.challenge_id, cfg, cmd.admin_id,
        resolve_keys=[rules.budget_alert_key(challenge.challenge_id)] if funded else [])
    uow.alerts.announce_resolved(written.resolved, note=f"max_risk raised to {cfg.max_risk}")


def fill_treasury(cmd: FillTreasury, uow: UnitOfWork) -> None:
    """An admin asks the treasury to match waiting users on ``side`` with shadow personas."""
    challenge = uow.challenges.get(cmd.challenge_id, lock=True)
    challenge.ensure_admin_created("fill")
    challenge.ensure_open("fill")
    cfg = uow.challenges.config(challenge.challenge_id)
    if cfg is None:
        raise Refused(f"challenge {challenge.challenge_id} has no treasury config; "
                      "configure_treasury first")
    cfg.ensure_can_fund(challenge.stake, challenge.challenge_id)
    uow.challenges.add_fill(
        challenge.challenge_id, cmd.side, cmd.match_count, cmd.admin_id, cmd.request_id,
        "assign_personas", {"request_id": next_step(cmd.request_id, "personas"),
                            "challenge_id": challenge.challenge_id})


def resolve_challenge(cmd: ResolveChallenge, uow: UnitOfWork) -> None:
    """The result is known: fills in progress are dropped and settlement is handed on."""
    challenge = uow.challenges.get(cmd.challenge_id, lock=True).resolve(cmd.result)
    open_fills = uow.challenges.resolve(
        challenge, cmd.resolved_by, "settle_challenge",
        {"request_id": next_step(cmd.request_id, "settle"),
         "challenge_id": challenge.challenge_id})
    for fill_id in open_fills:
        _drop_fill(uow, challenge, fill_id, "cancelled", "challenge resolved before the match")


# --- the fill: persona assignment, then match creation --------------------------------

def assign_personas(cmd: AssignPersonas, uow: UnitOfWork) -> None:
    """Pick the earliest waiting users and unused personas within the budget; hold them."""
    challenge = uow.challenges.get(cmd.challenge_id, lock=True)
    # The fill, the budget, the waiting users and the unused personas: one read, after the lock.
    fill, cfg, waiting, personas = uow.challenges.assign_context(cmd.fill_id,
                                                                 challenge.challenge_id)
    if fill.status != "requested":
        return
    if challenge.status != "open":
        uow.challenges.finish_fill(fill.id, "cancelled", reason=f"challenge {challenge.status}")
        return
    plan = rules.plan_fill(
        challenge_id=challenge.challenge_id, match_count=fill.requested, waiting=waiting,
        unused_personas=personas, available=cfg.available, stake=challenge.stake,
        persona_key=lambda p: p.code)
    uow.challenges.reserve(
        fill, plan.pairs, challenge.stake, cfg.reserve(plan.n * challenge.stake),
        plan.shortfall, plan.reasons,
        next_actor="create_treasury_matches" if plan.n else None,
        next_kwargs={"request_id": next_step(cmd.request_id, "matches"),
                     "challenge_id": challenge.challenge_id, "fill_id": fill.id})
    if plan.shortfall:
        _report_shortfall(uow, challenge, fill, plan)


def create_treasury_matches(cmd: CreateTreasuryMatches, uow: UnitOfWork) -> None:
    """One transaction: the treasury's stakes into escrow, the matches, the notifications."""
    challenge = uow.challenges.get(cmd.challenge_id, lock=True)
    # The fill, its reserved matches and the budget: one read, after the lock.
    fill, current, matches = uow.challenges.fill_context(cmd.fill_id, challenge.challenge_id)
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
        txn = uow.ledger.post(
            [Posting(treasury_account(challenge.currency), challenge.currency, -amount),
             Posting(escrow_account(challenge.challenge_id), challenge.currency, amount)],
            kind="treasury_stake",
            idempotency_key=f"challenge:{challenge.challenge_id}:fill:{fill.id}",
            memo=f"treasury stakes {len(matches)} match(es) on challenge {challenge.challenge_id}",
            metadata={"challenge_id": challenge.challenge_id, "fill_id": fill.id})
    except InsufficientFunds as exc:
        _treasury_cannot_pay(uow, challenge, fill, amount, str(exc))
        return
    exhausted = [] if cfg.funds(challenge.stake) else [_budget_alert(challenge, cfg)]
    written = uow.challenges.activate(
        challenge.challenge_id, fill.id, matches, cfg, txn,
        _match_events(challenge, fill, matches, cfg),
        resolve_keys=[rules.underfunded_alert_key(challenge.currency)], raise_items=exhausted)
    uow.alerts.announce_resolved(written.resolved, note="a fill was funded")
    uow.alerts.announce_raised(exhausted if written.raised else [], written.raised)


# --- settlement -----------------------------------------------------------------------

def settle_challenge(cmd: SettleChallenge, uow: UnitOfWork) -> None:
    """Pay every seat of a resolved challenge, batch by batch, then close the escrow: one
    transaction (``services/payouts.py``, the escrow payouts' one mechanism), so a crash
    pays nothing and a redelivery after the commit finds the challenge settled.  A failure
    for good (permanent, or transient on the last attempt) leaves the challenge
    ``settlement_failed`` with an alert before the message is dead-lettered.
    """
    def pay() -> None:
        while not settle_next_batch(cmd.challenge_id, uow):
            faults.point("settle_batch", "settle_challenge")  # (a crash here pays nothing)

    payouts.pay_out(uow, pay,
                    lambda reason: record_settlement_failure(cmd.challenge_id, reason, uow))


def settle_next_batch(challenge_id: str, uow: UnitOfWork) -> bool:
    """Settle the next batch of seats (one wallet transaction from the escrow, its seats
    marked settled); the last batch also closes the escrow.  True when done."""
    challenge = uow.challenges.get(challenge_id, lock=True)
    if challenge.status == "settled":
        return True
    # settlement_failed: a dead letter replayed before `challenge settle` resumes just the same.
    if challenge.status not in ("resolved", "settlement_failed"):
        raise Refused(f"challenge {challenge_id} is {challenge.status}, not resolved")
    seats = uow.challenges.unsettled(challenge_id, SETTLE_BATCH + 1)
    last = len(seats) <= SETTLE_BATCH
    seats = seats[:SETTLE_BATCH]
    outcomes = [(s, rules.settle_user(stake=s.stake, side=s.side, result=challenge.result,
                                      opponent=s.opponent)) for s in seats]
    matches = [(s.match_id, rules.settle_treasury_match(stake=s.stake, user_side=s.side,
                                                        result=challenge.result))
               for s in seats if s.opponent == "treasury"]
    txn = _pay_seats(uow, challenge, outcomes, seats)
    uow.challenges.settle_seats(outcomes, txn, matches,
                                [("challenge.settled", _settled_notice(challenge, seat, outcome),
                                  seat.user_id) for seat, outcome in outcomes])
    back = sum(m.payout for _, m in matches)
    if back:  # last: treasury:{CUR} is the hottest account
        escrow, cur = escrow_account(challenge_id), challenge.currency
        uow.ledger.post([Posting(escrow, cur, -back), Posting(treasury_account(cur), cur, back)],
                        kind="treasury_payout",
                        idempotency_key=f"challenge:{challenge_id}:treasury:{seats[0].participant_id}",
                        memo=f"treasury matches of challenge {challenge_id} ({challenge.result})",
                        metadata={"challenge_id": challenge_id})
    if last:
        _close_settlement(uow, challenge)
    return last


def record_settlement_failure(challenge_id: str, reason: str, uow: UnitOfWork) -> bool:
    """In a transaction of its own: ``settlement_failed``, a critical alert and an admin
    event.  False when the challenge was not ``resolved`` (nothing to record)."""
    with uow:
        challenge = uow.challenges.get(challenge_id, lock=True)
        if not uow.challenges.mark_settlement_failed(challenge_id, reason):
            return False
        uow.alerts.raise_(kind="challenge_settlement_failed", severity="critical",
                          subject=f"settlement of challenge {challenge_id} failed: {reason}"[:300],
                          dedupe_key=rules.settlement_failed_alert_key(challenge_id),
                          data={"challenge_id": challenge_id, "result": challenge.result,
                                "reason": reason[:500],
                                "retry": f"ballast challenge settle {challenge_id} --by NAME"})
        uow.emit("admin.treasury.settlement_failed", {
            "challenge_id": challenge_id, "result": challenge.result, "reason": reason[:500],
            "message": f"Settlement of {challenge_id} failed: {reason}"[:300]}, recipient="admin")
        uow.commit()
    log.error("challenge.settlement_failed", challenge_id=challenge_id, reason=reason)
    return True


def retry_challenge_settlement(cmd: RetryChallengeSettlement, uow: UnitOfWork) -> Challenge:
    """``ballast challenge settle ID --by NAME``, once its cause is fixed: settlement_failed →
    resolved, and a new ``settle_challenge`` (the failed one paid nothing: its transaction
    rolled back)."""
    challenge = uow.challenges.get(cmd.challenge_id, lock=True).retry_settlement()
    attempt = uow.challenges.reopen_settlement(cmd.challenge_id)
    uow.send("settle_challenge", challenge_id=cmd.challenge_id,
             request_id=next_step("challenge", cmd.challenge_id, "settle", "retry", attempt))
    uow.emit("admin.treasury.settlement_retried", {
        "challenge_id": cmd.challenge_id, "retry": attempt, "requested_by": cmd.retried_by},
        recipient="admin")
    log.info("challenge.settlement_retried", challenge_id=cmd.challenge_id, retry=attempt,
             requested_by=cmd.retried_by)
    return challenge


def _pay_seats(uow: UnitOfWork, challenge: Challenge, outcomes, seats: list[Seat]) -> int | None:
    """The users' payouts and refunds of one batch from the escrow: one wallet transaction."""
    changes = [WalletChange(s.user_id, challenge.currency, o.payout, o.change_kind,
                            reason=f"challenge {challenge.challenge_id} {challenge.result}: "
                                   f"{o.outcome}",
                            metadata={"challenge_id": challenge.challenge_id})
               for s, o in outcomes if o.payout > 0]
    if not changes:
        return None
    return wallets.apply_changes(
        uow, changes, counter_account=escrow_account(challenge.challenge_id),
        kind="challenge_settlement",
        memo=f"settlement of challenge {challenge.challenge_id} ({challenge.result})",
        idempotency_key=f"challenge:{challenge.challenge_id}:settle:{seats[0].participant_id}",
        metadata={"challenge_id": challenge.challenge_id, "result": challenge.result})


def _settled_notice(challenge: Challenge, seat: Seat, outcome: rules.UserSettlement) -> dict:
    amount, message = rules.settlement_notice(outcome, seat.stake, challenge.currency)
    return {"challenge_id": challenge.challenge_id, "user_id": seat.user_id, "side": seat.side,
            "result": challenge.result, "outcome": outcome.outcome, "amount": amount,
            "credited": outcome.payout, "stake": seat.stake, "currency": challenge.currency,
            "message": message}


def _close_settlement(uow: UnitOfWork, challenge: Challenge) -> None:
    # Settled, and its alerts resolved (a settlement that completed clears its failure
    # alert too, after a retry), with what its report needs (the escrow, the settled matches,
    # the users' outcomes): one statement; the alerts' events and the report: one more.
    cid = challenge.challenge_id
    closed = uow.challenges.close_settlement(
        cid, escrow_account(cid), [rules.budget_alert_key(cid), rules.personas_alert_key(cid),
                                   rules.settlement_failed_alert_key(cid)])
    payouts.check_escrow(escrow_account(cid), closed.escrow_left, 0)
    outcome = rules.treasury_outcome(closed.matches, challenge.stake)
    report = {
        "challenge_id": cid, "result": challenge.result,
        "currency": challenge.currency, "stake": challenge.stake, "users": closed.users,
        "matches": outcome.matches, "won": outcome.won, "lost": outcome.lost,
        "refunded": outcome.refunded, "won_amount": outcome.won_amount,
        "lost_amount": outcome.lost_amount, "refunded_amount": outcome.refunded_amount,
        "treasury_payout": outcome.payout, "net_pnl": outcome.net_pnl,
        "message": rules.settlement_message(outcome, challenge.currency)}
    uow.alerts.announce_resolved(closed.resolved, note="challenge settled",
                                 also=[("admin.treasury.settlement", report, "admin")])


# --- the daily summary ----------------------------------------------------------------

def send_daily_summary(cmd: SendDailySummary, uow: UnitOfWork) -> None:
    """The admins' report of one day's treasury activity (default: yesterday, BALLAST_TIMEZONE)."""
    tz = ZoneInfo(get_settings().timezone)
    day = cmd.day or (datetime.now(tz).date() - timedelta(days=1))
    start = datetime.combine(day, datetime.min.time(), tzinfo=tz)
    report = uow.challenges.daily_summary(start, start + timedelta(days=1))
    uow.emit("admin.treasury.daily_summary",
             {"day": day.isoformat(), "timezone": tz.key, **report}, recipient="admin")


# --- helpers --------------------------------------------------------------------------

def _pair_waiting(uow: UnitOfWork, challenge: Challenge) -> None:
    """Pair whoever waits on both sides, earliest first, and tell both users."""
    k = min(uow.challenges.waiting_counts(challenge.challenge_id).values())
    if not k:
        return
    pairs = rules.pair_first_come(uow.challenges.waiting(challenge.challenge_id, "YES", k),
                                  uow.challenges.waiting(challenge.challenge_id, "NO", k))
    uow.challenges.pair(pairs, _pair_events(challenge, pairs))


def _pair_events(challenge: Challenge, pairs) -> list[tuple[str, dict, str]]:
    """Both users of each pair are told (``match.found``)."""
    return [("match.found", {
        "challenge_id": challenge.challenge_id, "user_id": me.user_id, "side": me.side,
        "opponent": them.user_id, "stake": challenge.stake,
        "currency": challenge.currency, "message": rules.matched_message(None)}, me.user_id)
        for yes, no in pairs for me, them in ((yes, no), (no, yes))]


def _match_events(challenge: Challenge, fill: Fill, matches: list[ReservedMatch],
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
                 f"({cfg.allocated} of {cfg.max_risk})",
                 rules.budget_alert_key(challenge.challenge_id),
                 {"challenge_id": challenge.challenge_id, "max_risk": cfg.max_risk,
                  "allocated": cfg.allocated})


def _report_shortfall(uow: UnitOfWork, challenge: Challenge, fill: Fill,
                      plan: rules.FillPlan) -> None:
    uow.emit("admin.treasury.fill_shortfall", {
        "challenge_id": challenge.challenge_id, "fill_id": fill.id, "side": fill.side,
        "requested": plan.requested, "assigned": plan.n, "shortfall": plan.shortfall,
        "reasons": list(plan.reasons)}, recipient="admin")
    cid = challenge.challenge_id
    data = {"challenge_id": cid, "fill_id": fill.id, "requested": plan.requested,
            "assigned": plan.n}
    left = f"{plan.shortfall} of {plan.requested} users left waiting"
    if rules.SHORTFALL_PERSONAS in plan.reasons:
        uow.alerts.raise_(kind="persona_pool_exhausted", severity="warning",
                          subject=f"persona pool exhausted for challenge {cid}: {left}",
                          dedupe_key=rules.personas_alert_key(cid), data=data)
    if rules.SHORTFALL_BUDGET in plan.reasons:
        uow.alerts.raise_(kind="treasury_budget_exhausted", severity="warning",
                          subject=f"treasury budget exhausted for challenge {cid}: {left}",
                          dedupe_key=rules.budget_alert_key(cid), data=data)


def _treasury_cannot_pay(uow: UnitOfWork, challenge: Challenge, fill: Fill, amount: int,
                         reason: str) -> None:
    """Nothing is created; the users wait again and the admins are alerted."""
    _drop_fill(uow, challenge, fill.id, "failed", reason)
    _pair_waiting(uow, challenge)
    uow.alerts.raise_(kind="treasury_insufficient_funds", severity="critical",
                      subject=f"{treasury_account(challenge.currency)} cannot fund a fill of "
                              f"{amount} on challenge {challenge.challenge_id}",
                      dedupe_key=rules.underfunded_alert_key(challenge.currency),
                      data={"challenge_id": challenge.challenge_id, "fill_id": fill.id,
                            "amount": amount, "reason": reason})
    uow.emit("admin.treasury.fill_failed", {
        "challenge_id": challenge.challenge_id, "fill_id": fill.id, "amount": amount,
        "currency": challenge.currency, "reason": reason}, recipient="admin")


def _drop_fill(uow: UnitOfWork, challenge: Challenge, fill_id: int, status: str,
               reason: str) -> None:
    """A fill that will not become matches: what it held goes back to the budget."""
    held = uow.challenges.release(fill_id)
    if held:
        cfg = uow.challenges.config(challenge.challenge_id, lock=True)
        uow.challenges.save_config(challenge.challenge_id, cfg.release(held))
    uow.challenges.finish_fill(fill_id, status, reason=reason)
    log.info("treasury.fill_dropped", fill_id=fill_id, status=status, reason=reason)
