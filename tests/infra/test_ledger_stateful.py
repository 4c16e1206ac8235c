"""The ledger against a real database, driven by random postings, reversals and repeats.

After every step: each transaction sums to zero per currency, cached balances equal the
sums of entries (``infra.ledger.check``), no account that may not go negative is
negative, and the balances equal a model kept by the test.  A rejected posting must
change nothing, even when its caller goes on and commits the transaction.
"""

from __future__ import annotations

from collections import defaultdict

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from sqlalchemy import text

from domain.errors import InsufficientFunds, LedgerError
from domain.ledger import Posting, PostingBatchItem, is_unlimited, may_go_negative
from infra import ledger
from tests.harness import uid

CURRENCIES = ("NGN", "USD", "TOKEN")
#: world and user may go negative; treasury and escrow may not.
ROLES = ("world", "user_a", "user_b", "treasury", "escrow")

transfers = st.lists(
    st.tuples(st.sampled_from(ROLES), st.sampled_from(ROLES), st.sampled_from(CURRENCIES),
              st.integers(1, 1_000)).filter(lambda t: t[0] != t[1]),
    min_size=1, max_size=4,
)


def snapshot(conn) -> tuple:
    """Everything a posting could change: every account (its row and its shards), and the
    row counts."""
    accounts = conn.execute(text(
        "SELECT code, currency, allow_negative, sharded, balance FROM accounts ORDER BY code")).all()
    shards = conn.execute(text(
        "SELECT a.code, s.shard, s.balance FROM account_shards s JOIN accounts a "
        "ON a.id = s.account_id ORDER BY a.code, s.shard")).all()
    counts = conn.execute(text(
        "SELECT (SELECT count(*) FROM ledger_transactions), (SELECT count(*) FROM ledger_entries)"
    )).one()
    return tuple(map(tuple, accounts)), tuple(map(tuple, shards)), tuple(counts)


class LedgerMachine(RuleBasedStateMachine):
    engine = None  # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.prefix = uid("s")  # fresh accounts per example
        self.model: dict[str, int] = defaultdict(int)  # expected balance per account
        self.currency_of: dict[str, str] = {}  # accounts that exist, with their currency
        self.keyed: dict[str, tuple[int, list[Posting]]] = {}  # idempotency key -> (id, postings)
        self.originals: dict[int, list[Posting]] = {}  # reversible transactions
        self.reversed: dict[int, int] = {}  # original id -> reversal id
        self.step = 0

    # --- helpers ------------------------------------------------------------------

    def code(self, role: str, currency: str) -> str:
        return {
            "world": f"world:{self.prefix}:{currency}",
            "user_a": f"user:{self.prefix}a:{currency}",
            "user_b": f"user:{self.prefix}b:{currency}",
            "treasury": f"treasury:{self.prefix}:{currency}",
            "escrow": f"escrow:challenge:{self.prefix}{currency}",
        }[role]

    def postings(self, moves) -> list[Posting]:
        out = []
        for src, dst, cur, amount in moves:
            out += [Posting(self.code(src, cur), cur, -amount), Posting(self.code(dst, cur), cur, amount)]
        return out

    def refused_by_model(self, postings: list[Posting], model: dict[str, int] | None = None) -> bool:
        model = self.model if model is None else model
        net: dict[str, int] = defaultdict(int)
        for p in postings:
            net[p.account] += p.amount
        return any(model[c] + d < 0 and not may_go_negative(c) for c, d in net.items())

    def apply(self, txn_id: int, postings: list[Posting]) -> None:
        for p in postings:
            self.model[p.account] += p.amount
            self.currency_of[p.account] = p.currency

    def expect_refusal(self, error: type[Exception], call, match: str | None = None) -> None:
        """``call(conn)`` must raise ``error`` and, although the caller commits, change nothing."""
        with self.engine.connect() as conn:
            before = snapshot(conn)
        with self.engine.begin() as conn:
            try:
                call(conn)
            except error as exc:
                assert match is None or match in str(exc), str(exc)
            else:
                raise AssertionError(f"expected {error.__name__}")
        with self.engine.connect() as conn:
            assert snapshot(conn) == before, "a rejected posting changed the database"

    # --- rules --------------------------------------------------------------------

    @rule(moves=transfers, keyed=st.booleans())
    def post(self, moves, keyed):
        postings = self.postings(moves)
        key = f"{self.prefix}-k{self.step}" if keyed else None
        self.step += 1
        if self.refused_by_model(postings):
            self.expect_refusal(InsufficientFunds, lambda conn: ledger.post(
                conn, postings, kind="test", idempotency_key=key))
            return
        with self.engine.begin() as conn:
            txn_id = ledger.post(conn, postings, kind="test", idempotency_key=key)
        self.apply(txn_id, postings)
        self.originals[txn_id] = postings
        if key:
            self.keyed[key] = (txn_id, postings)

    @rule(batch=st.lists(transfers, min_size=1, max_size=4), keyed=st.booleans())
    def post_a_batch(self, batch, keyed):
        """``post_many``: each transaction checked after the ones before it, all or none."""
        items = []
        for moves in batch:
            key = f"{self.prefix}-k{self.step}" if keyed else None
            self.step += 1
            items.append(PostingBatchItem(self.postings(moves), "test", idempotency_key=key))
        model = defaultdict(int, self.model)
        refused = False
        for item in items:
            refused = refused or self.refused_by_model(item.postings, model)
            for p in item.postings:
                model[p.account] += p.amount
        if refused:
            self.expect_refusal(InsufficientFunds, lambda conn: ledger.post_many(conn, items),
                                match="of the batch" if len(items) > 1 else None)
            return
        with self.engine.begin() as conn:
            ids = ledger.post_many(conn, items)
        assert len(set(ids)) == len(items)
        for txn_id, item in zip(ids, items):
            self.apply(txn_id, item.postings)
            self.originals[txn_id] = item.postings
            if item.idempotency_key:
                self.keyed[item.idempotency_key] = (txn_id, item.postings)

    @precondition(lambda self: self.keyed)
    @rule(data=st.data())
    def repeat_with_same_postings(self, data):
        key = data.draw(st.sampled_from(sorted(self.keyed)))
        txn_id, postings = self.keyed[key]
        with self.engine.connect() as conn:
            before = snapshot(conn)
        with self.engine.begin() as conn:
            again = ledger.post(conn, data.draw(st.permutations(postings)), kind="test",
                                idempotency_key=key)
        assert again == txn_id
        with self.engine.connect() as conn:
            assert snapshot(conn) == before

    @precondition(lambda self: self.keyed)
    @rule(data=st.data(), extra=st.integers(1, 50))
    def repeat_with_other_postings(self, data, extra):
        key = data.draw(st.sampled_from(sorted(self.keyed)))
        _, postings = self.keyed[key]
        first, second = postings[0], postings[1]  # one move: debit then credit
        other = [Posting(first.account, first.currency, first.amount - extra),
                 Posting(second.account, second.currency, second.amount + extra), *postings[2:]]
        self.expect_refusal(LedgerError, lambda conn: ledger.post(
            conn, other, kind="test", idempotency_key=key), match="reused")

    @precondition(lambda self: self.originals)
    @rule(data=st.data())
    def reverse(self, data):
        txn_id = data.draw(st.sampled_from(sorted(self.originals)))
        if txn_id in self.reversed:
            with self.engine.connect() as conn:
                before = snapshot(conn)
            with self.engine.begin() as conn:
                assert ledger.reverse(conn, txn_id) == self.reversed[txn_id]
            with self.engine.connect() as conn:
                assert snapshot(conn) == before
            return
        undo = [Posting(p.account, p.currency, -p.amount) for p in self.originals[txn_id]]
        if self.refused_by_model(undo):
            self.expect_refusal(InsufficientFunds, lambda conn: ledger.reverse(conn, txn_id))
            return
        with self.engine.begin() as conn:
            rev_id = ledger.reverse(conn, txn_id)
            row = conn.execute(text("SELECT reverses_id FROM ledger_transactions WHERE id = :i"),
                               {"i": rev_id}).one()
        assert row.reverses_id == txn_id
        self.apply(rev_id, undo)
        self.reversed[txn_id] = rev_id

    @precondition(lambda self: self.reversed)
    @rule(data=st.data())
    def reverse_a_reversal(self, data):
        rev_id = data.draw(st.sampled_from(sorted(self.reversed.values())))
        self.expect_refusal(LedgerError, lambda conn: ledger.reverse(conn, rev_id),
                            match="itself a reversal")

    @precondition(lambda self: self.currency_of)
    @rule(data=st.data(), amount=st.integers(1, 1_000))
    def post_in_the_wrong_currency(self, data, amount):
        code = data.draw(st.sampled_from(sorted(self.currency_of)))
        wrong = data.draw(st.sampled_from([c for c in CURRENCIES if c != self.currency_of[code]]))
        postings = [Posting(self.code("world", wrong), wrong, -amount), Posting(code, wrong, amount)]
        self.expect_refusal(LedgerError, lambda conn: ledger.post(conn, postings, kind="test"),
                            match="holds")

    @rule(moves=transfers, off_by=st.integers(1, 10))
    def post_unbalanced(self, moves, off_by):
        postings = self.postings(moves)
        last = postings[-1]
        postings[-1] = Posting(last.account, last.currency, last.amount + off_by)
        self.expect_refusal(LedgerError, lambda conn: ledger.post(conn, postings, kind="test"),
                            match="does not balance")

    # --- invariants ---------------------------------------------------------------

    @invariant()
    def books_are_sound(self):
        with self.engine.connect() as conn:
            result = ledger.check(conn)
            assert result["ok"], result
            # The balance a reader sees: the row, plus the shards of an unlimited account.
            rows = conn.execute(text(
                "SELECT a.code, a.currency, a.balance, COALESCE(sum(e.amount), 0) AS total "
                "FROM account_balances a LEFT JOIN ledger_entries e ON e.account_id = a.id "
                "WHERE a.code LIKE :p GROUP BY a.id, a.code, a.currency, a.balance"),
                {"p": f"%{self.prefix}%"}).all()
        found = {r.code: (r.currency, int(r.balance), int(r.total)) for r in rows}
        expected = {c: (self.currency_of[c], self.model[c], self.model[c]) for c in self.currency_of}
        assert found == expected
        assert all(bal >= 0 for c, (_, bal, _) in found.items() if not may_go_negative(c))
        with self.engine.connect() as conn:
            sharded = dict(conn.execute(text(
                "SELECT code, sharded FROM accounts WHERE code LIKE :p"),
                {"p": f"%{self.prefix}%"}).all())
        assert sharded == {c: is_unlimited(c) for c in self.currency_of}

    @invariant()
    def reversals_negate_their_original(self):
        if not self.reversed:
            return
        with self.engine.connect() as conn:
            bad = conn.execute(text(
                "SELECT r.id FROM ledger_transactions r JOIN ledger_entries e ON e.transaction_id "
                "IN (r.id, r.reverses_id) WHERE r.id = ANY(:ids) "
                "GROUP BY r.id, e.account_id HAVING sum(e.amount) <> 0"),
                {"ids": list(self.reversed.values())}).all()
        assert not bad


def test_ledger_invariants_hold_under_random_postings_reversals_and_repeats(engine):
    LedgerMachine.engine = engine
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(max_examples=30, stateful_step_count=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]),
    )
