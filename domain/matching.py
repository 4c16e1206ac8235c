"""Payment matching, pure: memo scores, candidate lookup, one decision per journal entry.

A participation expects a payment with the memo ``ARB {cycle_id} {character_name}``
(SPEC §5).  A journal entry's memo scores against each expected memo:

- equal (outer whitespace ignored): 1000, ``auto_exact``;
- contains the expected memo: 500, ``auto_contains``;
- else Levenshtein distance ``d`` (case-insensitive) ≤ 3: ``100 − 10·d``, ``auto_fuzzy``;

plus 50 when the amount equals the pledge.  A score of 100 or more is accepted.  The
best score wins; a tie between participations is *ambiguous* and left for review.
Several entries may go to one participation (they are summed); one entry never goes
to two.

``match`` finds the candidates by lookup (a dict of expected memos for equal and
contained memos) and only then, for entries with no such candidate, by a blocked
fuzzy search (per cycle prefix, then by name length, with rapidfuzz).  It decides
exactly as ``match_reference``, the plain nested loop that scores every entry
against every participation: the tests and the benchmark hold them to that.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from domain.lifecycle import Lifecycle, table

MEMO_PREFIX = "ARB"

SCORE_EXACT = 1000
SCORE_CONTAINS = 500
SCORE_FUZZY = 100  # at distance 0 (a memo equal but for letter case)
FUZZY_STEP = 10  # points lost per edit
AMOUNT_BONUS = 50  # the amount equals the pledge
ACCEPT = 100  # lowest accepted score: a fuzzy memo needs the exact amount
MAX_DISTANCE = 3  # edits; beyond this a memo is no candidate at all

AUTO_EXACT = "auto_exact"
AUTO_CONTAINS = "auto_contains"
AUTO_FUZZY = "auto_fuzzy"
MANUAL = "manual"
MATCH_TYPES = (AUTO_EXACT, AUTO_CONTAINS, AUTO_FUZZY, MANUAL)

MATCHED = "matched"
AMBIGUOUS = "ambiguous"
UNMATCHED = "unmatched"

# Participation statuses.
AWAITING = "AWAITING_INVESTMENT"
OPTED_IN = "OPTED_IN"
EXPIRED = "EXPIRED"

#: A participation awaits its payment until it is paid in full (opted in) or its cycle opens
#: without it (expired).
PARTICIPATION = Lifecycle("participation", AWAITING, table(
    AWAITING_INVESTMENT=(OPTED_IN, EXPIRED), OPTED_IN=(), EXPIRED=()))
#: A cycle: planned → open (with the capital its participations brought) → closed.
CYCLE = Lifecycle("cycle", "planned", table(planned=("open",), open=("closed",), closed=()))

#: Which participation expects a payment: one awaiting it, or opted in and topping up…
TAKING_PAYMENT: tuple[str, ...] = (AWAITING, OPTED_IN)
#: …in a cycle not yet open.  (``participation_problem``; bound in SQL by the journal's
#: repository and views, held equal by tests/infra/test_journal_expecting.py.)
CYCLE_TAKING_PAYMENTS = CYCLE.initial

# What a journal entry must be to pay for a participation.
DONATION = "player_donation"
LOGISTICS = "LOGISTICS"


def expected_memo(cycle_id: str, character_name: str) -> str:
    """The memo a participant is told to send."""
    return f"{MEMO_PREFIX} {cycle_id} {character_name}"


@dataclass(frozen=True, slots=True)
class Expectation:
    """A participation waiting for (more) money.

    Parameters:
      participation_id: unique id.
      cycle_id: its cycle; part of the memo.
      character_name: the participant's character; part of the memo.
      pledged: the pledge in ISK minor units.
    """

    participation_id: str
    cycle_id: str
    character_name: str
    pledged: int

    @property
    def memo(self) -> str:
        return expected_memo(self.cycle_id, self.character_name)


@dataclass(frozen=True, slots=True)
class Payment:
    """A donation received by a LOGISTICS character, not linked yet.

    Parameters:
      journal_id: unique id of the wallet-journal entry.
      amount: ISK minor units received (positive).
      memo: the entry's reason text, as the payer typed it.
    """

    journal_id: str
    amount: int
    memo: str


@dataclass(frozen=True, slots=True)
class Score:
    points: int
    match_type: str
    distance: int | None = None  # edits, for fuzzy memos


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to one journal entry.

    ``outcome`` is ``matched`` (``participation_id`` set), ``ambiguous`` (``tied``
    holds the participations sharing the best score) or ``unmatched`` (``tied``
    holds the best near misses below the acceptance score, if any).
    """

    journal_id: str
    outcome: str
    participation_id: str | None = None
    match_type: str | None = None
    points: int = 0
    tied: tuple[str, ...] = ()


def score(memo: str, expected: str, amount: int, pledged: int) -> Score | None:
    """The score of a memo against one expected memo; None beyond fuzzy distance."""
    bonus = AMOUNT_BONUS if amount == pledged else 0
    if memo.strip() == expected:
        return Score(SCORE_EXACT + bonus, AUTO_EXACT, 0)
    if expected in memo:
        return Score(SCORE_CONTAINS + bonus, AUTO_CONTAINS)
    d = Levenshtein.distance(memo.strip().lower(), expected.lower(), score_cutoff=MAX_DISTANCE)
    if d > MAX_DISTANCE:
        return None
    return Score(SCORE_FUZZY - FUZZY_STEP * d + bonus, AUTO_FUZZY, d)


def decide(journal_id: str, scored: Mapping[str, Score]) -> Decision:
    """The best score wins when accepted and alone; a tie is ambiguous, never guessed."""
    if not scored:
        return Decision(journal_id, UNMATCHED)
    best = max(s.points for s in scored.values())
    top = tuple(sorted(pid for pid, s in scored.items() if s.points == best))
    if best < ACCEPT:
        return Decision(journal_id, UNMATCHED, points=best, tied=top)
    if len(top) > 1:
        return Decision(journal_id, AMBIGUOUS, points=best, tied=top)
    return Decision(journal_id, MATCHED, top[0], scored[top[0]].match_type, best, top)


def match_reference(payments: Iterable[Payment], expectations: Sequence[Expectation]) -> list[Decision]:
    """Every payment scored against every participation: the yardstick, O(n·m)."""
    _check_unique(expectations)
    decisions = []
    for pay in payments:
        scored = {}
        for exp in expectations:
            s = score(pay.memo, exp.memo, pay.amount, exp.pledged)
            if s is not None:
                scored[exp.participation_id] = s
        decisions.append(decide(pay.journal_id, scored))
    return decisions


def match(payments: Iterable[Payment], expectations: Sequence[Expectation]) -> list[Decision]:
    """The same decisions as ``match_reference``, found by lookup and blocked search."""
    index = MemoIndex(expectations)
    return [index.decide(pay) for pay in payments]


class _CycleBlock:
    """The fuzzy block of one cycle: its lower-case memo prefix, and its lower-case
    expected memos sorted by length."""

    __slots__ = ("prefix", "memos", "lengths", "ids_by_memo")

    def __init__(self, cycle_id: str) -> None:
        self.prefix = expected_memo(cycle_id, "").lower()
        self.memos: list[str] = []
        self.lengths: list[int] = []
        self.ids_by_memo: dict[str, list[int]] = defaultdict(list)

    def freeze(self) -> None:
        self.memos = sorted(self.ids_by_memo, key=len)
        self.lengths = [len(m) for m in self.memos]


class MemoIndex:
    """Expected memos indexed for lookup.

    - ``by_memo``: expected memo → participations (equal and contained memos);
    - ``memo_lengths``: cycle id → lengths of its expected memos, so a memo is
      probed only at each ``ARB <cycle> `` it contains, once per length;
    - per cycle, lower-case expected memos sorted by length for the fuzzy search.
    """

    def __init__(self, expectations: Sequence[Expectation]) -> None:
        _check_unique(expectations)
        self.expectations = list(expectations)
        self.memos = [e.memo for e in self.expectations]
        self.by_memo: dict[str, list[int]] = defaultdict(list)
        lengths: dict[str, set[int]] = defaultdict(set)
        self.cycles: dict[str, _CycleBlock] = {}
        for i, (exp, memo) in enumerate(zip(self.expectations, self.memos)):
            self.by_memo[memo].append(i)
            lengths[exp.cycle_id].add(len(memo))
            block = self.cycles.get(exp.cycle_id)
            if block is None:
                block = self.cycles[exp.cycle_id] = _CycleBlock(exp.cycle_id)
            # The fuzzy search splits lower-cased memos after the lower-cased prefix.
            lowered = memo.lower()
            if not lowered.startswith(block.prefix):
                raise ValueError(f"cannot index the memo {memo!r}")
            block.ids_by_memo[lowered].append(i)
        self.memo_lengths = {c: sorted(ls) for c, ls in lengths.items()}
        for block in self.cycles.values():
            block.freeze()

    def decide(self, pay: Payment) -> Decision:
        found = self.containing(pay.memo) or self.near(pay.memo)
        scored = {}
        for i in found:
            exp = self.expectations[i]
            s = score(pay.memo, self.memos[i], pay.amount, exp.pledged)
            if s is not None:
                scored[exp.participation_id] = s
        return decide(pay.journal_id, scored)

    def containing(self, memo: str) -> set[int]:
        """Participations whose expected memo is in ``memo`` (equal ones included).

        Each scores 500 or more, so no fuzzy candidate (150 at most) can beat them.
        """
        found: set[int] = set()
        head = MEMO_PREFIX + " "
        at = memo.find(head)
        while at >= 0:
            start = at + len(head)
            end = memo.find(" ", start)
            if end > start:
                for length in self.memo_lengths.get(memo[start:end], ()):
                    found.update(self.by_memo.get(memo[at:at + length], ()))
            at = memo.find(head, at + 1)
        return found

    def near(self, memo: str) -> set[int]:
        """Participations whose expected memo is within MAX_DISTANCE of ``memo``, ignoring case.

        Blocked twice.  By cycle: an expected memo is ``prefix + name`` with the cycle's
        prefix ``arb {cycle} ``, and an alignment within k edits maps the prefix onto
        ``memo[:j]`` with |j − len(prefix)| ≤ k and d(prefix, memo[:j]) ≤ k; a cycle
        whose prefix fits no such ``j`` is skipped.  By length: only expected memos
        within k characters of the memo's length are compared (in rapidfuzz).
        """
        text = memo.strip().lower()
        found: set[int] = set()
        k = MAX_DISTANCE
        for block in self.cycles.values():
            plen = len(block.prefix)
            # d(prefix, text[:j]) ≥ d(prefix, text[:plen]) − |j − plen|: one comparison
            # rules most memos out before the k-window is tried.
            if Levenshtein.distance(block.prefix, text[:plen], score_cutoff=2 * k) > 2 * k:
                continue
            if all(Levenshtein.distance(block.prefix, text[:j], score_cutoff=k) > k
                   for j in range(max(0, plen - k), min(len(text), plen + k) + 1)):
                continue
            lo = bisect_left(block.lengths, len(text) - k)
            hi = bisect_right(block.lengths, len(text) + k)
            if lo < hi:
                for hit, _, _ in process.extract(text, block.memos[lo:hi], scorer=Levenshtein.distance,
                                                 score_cutoff=k, limit=None):
                    found.update(block.ids_by_memo[hit])
        return found


def _check_unique(expectations: Sequence[Expectation]) -> None:
    ids = [e.participation_id for e in expectations]
    if len(set(ids)) != len(ids):
        raise ValueError("participation ids must be unique")
    for e in expectations:
        if not e.cycle_id or " " in e.cycle_id:
            raise ValueError(f"cycle id {e.cycle_id!r} cannot be part of a memo")


# --- after the decisions -------------------------------------------------------------

def payment_state(received: int, pledged: int) -> str:
    """``matched`` when the participation has received its pledge, else ``partial`` or ``over``."""
    if received < pledged:
        return "partial"
    if received > pledged:
        return "over"
    return MATCHED


@dataclass(frozen=True, slots=True)
class Tally:
    """A run's outcome: every payment considered falls in exactly one class.

    ``matched``, ``partial`` and ``over`` count the linked payments by what their
    participation has received after the run (the pledge, less, more).
    """

    matched: int = 0
    partial: int = 0
    over: int = 0
    ambiguous: int = 0
    unmatched: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"matched": self.matched, "partial": self.partial, "over": self.over,
                "ambiguous": self.ambiguous, "unmatched": self.unmatched}


def tally(links: Mapping[str, str], totals: Mapping[str, int], pledged: Mapping[str, int],
          ambiguous: int, unmatched: int) -> Tally:
    """Count linked payments (journal id → participation id) by their participation's state."""
    counts = {MATCHED: 0, "partial": 0, "over": 0}
    for pid in links.values():
        counts[payment_state(totals[pid], pledged[pid])] += 1
    return Tally(counts[MATCHED], counts["partial"], counts["over"], ambiguous, unmatched)


# --- what may be linked (automatic and manual alike) -----------------------------------

def payment_problem(ref_type: str, amount: int, receiver_role: str | None) -> str | None:
    """Why a journal entry cannot pay for a participation, or None."""
    if ref_type != DONATION:
        return f"entry is a {ref_type}, not a {DONATION}"
    if amount <= 0:
        return f"entry pays out ({amount}), it does not receive"
    if receiver_role != LOGISTICS:
        return f"entry was received by a {receiver_role or 'unregistered'} character, not {LOGISTICS}"
    return None


def participation_problem(status: str, cycle_status: str) -> str | None:
    """Why a participation cannot take a payment, or None (awaiting, or topping up before open)."""
    if status not in TAKING_PAYMENT:
        return f"participation is {status}"
    if cycle_status != CYCLE_TAKING_PAYMENTS:
        return f"its cycle is {cycle_status}, no longer taking payments"
    return None


# --- suggestions for review (never applied automatically) ---------------------------------

#: Suggestions listed per payment without a usable memo.
SUGGESTIONS_MAX = 3


@dataclass(frozen=True, slots=True)
class Candidate:
    """A participation a payment without a usable memo might be for.

    Parameters:
      participation_id: the participation.
      pledged: its pledge (ISK minor units).
      at: when it was created, seconds on any common clock.
      known_payer: the payer's character is known to be this participant's (its registered
        name is the participation's character name, or it paid for this user before).
    """

    participation_id: str
    pledged: int
    at: int
    known_payer: bool = False


@dataclass(frozen=True, slots=True)
class Suggestion:
    participation_id: str
    same_amount: bool
    known_payer: bool
    seconds_apart: int

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(r for r, ok in (("same_amount", self.same_amount),
                                     ("known_payer", self.known_payer)) if ok)


def suggest(amount: int, paid_at: int, candidates: Iterable[Candidate],
            limit: int = SUGGESTIONS_MAX) -> list[Suggestion]:
    """Ranked suggestions for one payment: a candidate needs the same amount as its pledge
    or a known payer; more of those first, then the same amount, then the known payer, then
    the nearest date (ties by id).  For a person to review: nothing here links anything."""
    found = [Suggestion(c.participation_id, c.pledged == amount, c.known_payer, abs(paid_at - c.at))
             for c in candidates if c.pledged == amount or c.known_payer]
    found.sort(key=lambda s: (-(s.same_amount + s.known_payer), not s.same_amount,
                              not s.known_payer, s.seconds_apart, s.participation_id))
    return found[:limit]
