"""Payment matching (SPEC §4): characters, cycles, participations, the wallet journal, and
the links from payments to the participations expecting them.

    register_character     a character is registered with its role
    plan_cycle             a cycle is planned; it takes participations until it opens
    create_participation   a user pledges an amount under a character name
    import_wallet_journal  a batch of journal entries arrives; new ones are matched
    match_payments         unlinked payments are matched to participations
    link_payment           an admin links a payment, under the matcher's rules
    open_cycle             unpaid participations expire, the initial capital is reported
    close_cycle            the cycle's account is the closing capital

Linking steps hold the matching lock for their whole transaction, so they see each
other's links and never decide on the same payment at once; the link table's primary
key is the last word (one link per journal entry, ever).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Callable, Sequence

from domain import accounts
from domain import matching
from domain import request_ids
from domain.errors import LedgerError, Refused
from domain.ledger import Posting, PostingBatchItem
from domain.matching import Decision, Expectation, Payment, Tally
from infra.contract.journal import (
    CloseCycle,
    CreateParticipation,
    ImportWalletJournal,
    LinkPayment,
    MatchPayments,
    OpenCycle,
    PlanCycle,
    RegisterCharacter,
)
from infra.errors import Transient
from infra.journal.repository import Link, game_id
from infra.logs import get_logger
from infra.uow import UnitOfWork

log = get_logger(__name__)

CURRENCY = "ISK"
MATCHER = "matcher"  # performed_by of automatic links


def register_character(cmd: RegisterCharacter, uow: UnitOfWork) -> str:
    """A character is registered with its role; only LOGISTICS characters receive payments."""
    outcome = uow.journal.register_character(cmd.character_id, cmd.name, cmd.role)
    log.info("character.registered", character_id=cmd.character_id, role=cmd.role, outcome=outcome)
    return outcome


def plan_cycle(cmd: PlanCycle, uow: UnitOfWork) -> None:
    """A cycle is planned; it takes participations until it opens."""
    if not uow.journal.plan_cycle(cmd.cycle_id):
        log.info("cycle.exists", cycle_id=cmd.cycle_id)


def create_participation(cmd: CreateParticipation, uow: UnitOfWork) -> None:
    """A user pledges an amount under a character name; the memo to send is
    ``ARB {cycle_id} {character_name}``."""
    cycle = uow.journal.cycle(cmd.cycle_id, for_update=True)
    if cycle.status != "planned":
        raise Refused(f"cycle {cmd.cycle_id} is {cycle.status}, it takes no more participations")
    uow.journal.create_participation(cmd.participation_id, cmd.cycle_id, cmd.user_id,
                                     cmd.character_name, cmd.amount)


def import_wallet_journal(cmd: ImportWalletJournal, uow: UnitOfWork) -> int:
    """A batch of wallet-journal entries arrives; known journal ids are left as they were.
    New entries are handed to the matching step.  Returns how many were new."""
    new = uow.journal.import_entries(cmd.entries, cmd.request_id)
    log.info("journal.imported", entries=len(cmd.entries), new=new)
    if new:
        digest = hashlib.sha256(cmd.request_id.encode()).hexdigest()[:40]
        uow.send("match_payments", request_id=request_ids.next_step("import", digest))
    return new


def match_payments(cmd: MatchPayments, uow: UnitOfWork,
                   progress: Callable[..., None] | None = None) -> Tally:
    """Match unlinked payments to participations (after imports, every 5 min, on demand)."""
    return match(uow, cmd.cycle_id, progress)


class LinkRace(Transient):
    """A payment was linked by someone else meanwhile (transient: the retry re-reads)."""


def cycle_account(cycle_id: str) -> str:
    return accounts.cycle(cycle_id)


def match(uow: UnitOfWork, cycle_id: str | None = None,
          progress: Callable[..., None] | None = None) -> Tally:
    """One matching run: every unlinked payment against every participation expecting one.

    With ``cycle_id``, payments are still scored against every cycle (so the best
    score wins everywhere), but only links into that cycle are made, and only
    ambiguities that involve it are counted; unmatched payments belong to no cycle
    and are always counted.
    """
    tick = progress or (lambda n=1, total=None, what=None: None)
    tick(0, total=4, what="matching: loading")
    uow.journal.lock_matching()
    if cycle_id is not None:
        uow.journal.cycle(cycle_id)  # NotFound for an unknown cycle
    parts = uow.journal.expecting()
    cycle_of = {p.participation_id: p.cycle_id for p in parts}
    rows = {r.journal_id: r for r in uow.journal.candidate_payments()}
    tick(1, what=f"matching: {len(rows)} payments, {len(parts)} participations")
    decisions = matching.match(
        [Payment(r.journal_id, r.amount, r.reason) for r in rows.values()],
        [Expectation(p.participation_id, p.cycle_id, p.character_name, p.pledged) for p in parts],
    )

    def in_scope(*pids: str) -> bool:
        return cycle_id is None or any(cycle_of[p] == cycle_id for p in pids)

    links, verdicts, ambiguous, unmatched = [], {}, 0, 0
    for d in decisions:
        if d.outcome == matching.MATCHED and in_scope(d.participation_id):
            r = rows[d.journal_id]
            links.append(Link(d.journal_id, d.participation_id, r.amount, r.first_party_id, r.date,
                              d.match_type, d.points))
        elif d.outcome == matching.AMBIGUOUS:
            verdicts[d.journal_id] = (d.outcome, _note(d))
            ambiguous += in_scope(*d.tied)
        elif d.outcome == matching.UNMATCHED:
            verdicts[d.journal_id] = (d.outcome, _note(d) if d.tied else None)
            unmatched += 1
    tick(1, what=f"matching: linking {len(links)} payments")
    totals, pledged = apply_links(uow, links, performed_by=MATCHER)
    tick(1, what="matching: recording the review")
    uow.journal.record_review(verdicts)
    tick(1, what="matching")
    result = matching.tally({lk.journal_id: lk.participation_id for lk in links}, totals, pledged,
                            ambiguous, unmatched)
    log.info("matching.run", cycle_id=cycle_id, payments=len(decisions),
             participations=len(parts), **result.as_dict())
    return result


def link_payment(cmd: LinkPayment, uow: UnitOfWork) -> None:
    """An admin links a payment: the same rules as the matcher, the admin's word for the memo."""
    participation_id, journal_id, admin_id = cmd.participation_id, cmd.journal_id, cmd.admin_id
    uow.journal.lock_matching()
    entry = uow.journal.entry(journal_id)
    if entry.linked_to is not None:
        raise Refused(f"journal entry {journal_id} is already linked to {entry.linked_to}")
    problem = matching.payment_problem(entry.ref_type, entry.amount, entry.receiver_role)
    if problem:
        raise Refused(f"journal entry {journal_id} cannot pay: {problem}")
    part = uow.journal.participation(participation_id, for_update=True)
    problem = matching.participation_problem(part.status, part.cycle_status)
    if problem:
        raise Refused(f"participation {participation_id} cannot take a payment: {problem}")
    link = Link(journal_id, participation_id, entry.amount, entry.first_party_id, entry.date,
                matching.MANUAL, None)
    apply_links(uow, [link], performed_by=admin_id)
    log.info("matching.linked_by_hand", journal_id=journal_id, participation_id=participation_id,
             admin_id=admin_id)


def open_cycle(cmd: OpenCycle, uow: UnitOfWork) -> dict[str, object] | None:
    """Open a planned cycle: payments already in the journal are matched first, then the
    participations still awaiting payment expire.  None when it is already open."""
    cycle_id = cmd.cycle_id
    uow.journal.lock_matching()
    cyc = uow.journal.cycle(cycle_id, for_update=True)
    if cyc.status == "open":
        log.info("cycle.already_open", cycle_id=cycle_id)
        return None
    if cyc.status != "planned":
        raise Refused(f"cycle {cycle_id} is {cyc.status}, it cannot be opened")
    before = match(uow, cycle_id)
    opened = uow.journal.open_cycle(cycle_id)
    held = _cycle_balance(uow, cycle_id)
    if held != opened["initial_capital"]:
        raise LedgerError(f"{cycle_account(cycle_id)} holds {held}, "
                          f"participations confirm {opened['initial_capital']}")
    doc = {"cycle_id": cycle_id, "currency": CURRENCY, **opened, "matched_on_open": before.as_dict()}
    uow.emit("cycle.opened", doc, recipient="admin")
    log.info("cycle.opened", **doc)
    return doc


def close_cycle(cmd: CloseCycle, uow: UnitOfWork) -> dict[str, object] | None:
    """Close an open cycle: it took no participation or payment since it opened and takes
    none now; its account's balance is reported as the closing capital.  None when it is
    already closed."""
    cycle_id, closed_by = cmd.cycle_id, cmd.closed_by
    uow.journal.lock_matching()
    cyc = uow.journal.cycle(cycle_id, for_update=True)
    if cyc.status == "closed":
        log.info("cycle.already_closed", cycle_id=cycle_id)
        return None
    if cyc.status != "open":
        raise Refused(f"cycle {cycle_id} is {cyc.status}: only an open cycle is closed")
    capital = _cycle_balance(uow, cycle_id)
    uow.journal.close_cycle(cycle_id, capital, closed_by)
    doc = {"cycle_id": cycle_id, "currency": CURRENCY, "initial_capital": cyc.initial_capital,
           "closing_capital": capital, "closed_by": closed_by}
    uow.emit("cycle.closed", doc, recipient="admin")
    log.info("cycle.closed", **doc)
    return doc


def apply_links(uow: UnitOfWork, links: Sequence[Link], *,
                performed_by: str) -> tuple[dict[str, int], dict[str, int]]:
    """Link payments: audit rows, participations opted in with what they received, one
    deposit per cycle from ``world:ISK`` into ``cycle:{id}``, a ``payment.matched`` event
    per payment.  Returns (received, pledged) per participation touched."""
    if not links:
        return {}, {}
    request_id = uow.request_id or ""
    links = sorted(links, key=lambda lk: (lk.date, lk.journal_id))
    cycle_of = uow.journal.insert_links(links, request_id=request_id, performed_by=performed_by)
    if len(cycle_of) != len(links):
        raise LinkRace(f"{len(links) - len(cycle_of)} payment(s) were linked meanwhile")
    received: dict[str, tuple[int, str, str]] = {}
    for lk in links:  # oldest first: the first payer and match type stay
        amount, payer, kind = received.get(lk.participation_id, (0, lk.payer_character_id,
                                                                 lk.match_type))
        received[lk.participation_id] = (amount + lk.amount, payer, kind)
    after = {r.participation_id: r for r in uow.journal.credit_participations(received)}

    by_cycle: dict[str, list[Link]] = defaultdict(list)
    for lk in links:
        by_cycle[cycle_of[lk.journal_id]].append(lk)
    groups = sorted(by_cycle.items())
    totals = {cycle_id: sum(lk.amount for lk in group) for cycle_id, group in groups}
    deposits = [  # one transaction per cycle, all in one call of the ledger
        PostingBatchItem(
            [Posting(accounts.world(CURRENCY), CURRENCY, -totals[cycle_id]),
             Posting(cycle_account(cycle_id), CURRENCY, totals[cycle_id])],
            kind="cycle_deposit",
            # (actor, request_id) takes effect once, so this key is unique per deposit.
            idempotency_key=(f"cycle_deposit:{uow.actor}:{request_id}:{cycle_id}"
                             if uow.request_id else None),
            memo=f"{len(group)} payment(s) into cycle {cycle_id}",
            metadata={"request_id": request_id, "performed_by": performed_by, "payments": len(group)},
        )
        for cycle_id, group in groups
    ]
    for (_, group), txn in zip(groups, uow.ledger.post_many(deposits)):
        uow.journal.set_link_transaction((lk.journal_id for lk in group), txn)

    uow.journal.record_review({lk.journal_id: ("linked", None) for lk in links})
    events = []
    for lk in links:
        part = after[lk.participation_id]
        events.append(("payment.matched", {
            "participation_id": lk.participation_id,
            "cycle_id": part.cycle_id,
            "journal_id": lk.journal_id,
            "amount": lk.amount,
            "received": part.amount,
            "pledged": part.pledged,
            "state": matching.payment_state(part.amount, part.pledged),
            "match_type": lk.match_type,
            "payer_character_id": game_id(lk.payer_character_id),
            "currency": CURRENCY,
        }, part.user_id))
    uow.emit_many(events)  # (a big run's are left to the sweeper: outbox.PUBLISH_INLINE_MAX)
    totals = {pid: r.amount for pid, r in after.items()}
    return totals, {pid: r.pledged for pid, r in after.items()}


def _note(d: Decision) -> dict[str, object]:
    return {"participation_ids": list(d.tied), "score": d.points}


def _cycle_balance(uow: UnitOfWork, cycle_id: str) -> int:
    """What the cycle's account holds now."""
    code = cycle_account(cycle_id)
    return uow.ledger.balances([code]).get(code, 0)
