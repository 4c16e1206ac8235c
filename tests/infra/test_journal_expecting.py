"""Which participation expects a payment is written once, in the domain
(``participation_problem`` over ``TAKING_PAYMENT`` and ``CYCLE_TAKING_PAYMENTS``); the
matching run reads the candidates in SQL (``journal.repository.expecting``, the domain's
statuses bound).  Property: for any participations in any cycles, PostgreSQL picks exactly
those the domain says may take a payment."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func

from domain.matching import CYCLE, EXPIRED, OPTED_IN, PARTICIPATION, participation_problem
from infra.db.tables import journal_cycles, journal_participations
from infra.journal.repository import expecting
from tests.harness import uid

rows = st.lists(st.tuples(st.sampled_from(sorted(CYCLE.statuses)),
                          st.sampled_from(sorted(PARTICIPATION.statuses))), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(made=rows)
def test_the_participations_expecting_a_payment_are_the_domains(engine, made):
    tag = uid("x")
    with engine.connect() as conn, conn.begin() as tx:  # rolled back: nothing stays
        ids = {}
        for i, (cycle_status, status) in enumerate(made):
            cycle_id, pid = f"{tag}-c{i}", f"{tag}-p{i}"
            conn.execute(journal_cycles.insert().values(cycle_id=cycle_id, status=cycle_status))
            conn.execute(journal_participations.insert().values(
                participation_id=pid, cycle_id=cycle_id, user_id="u", character_name=f"n{i}",
                memo=f"ARB {cycle_id} n{i}", pledged=2, status=status,
                amount=1 if status == OPTED_IN else 0,  # opted in: paid, still topping up
                validated_at=func.now() if status == OPTED_IN else None,
                expired_at=func.now() if status == EXPIRED else None))
            ids[pid] = participation_problem(status, cycle_status) is None
        picked = {r.participation_id for r in expecting(conn) if r.participation_id in ids}
        tx.rollback()
    assert picked == {pid for pid, takes in ids.items() if takes}
