"""``pg_array``: lists bound as one array literal read back exactly by PostgreSQL."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from infra.db.engine import pg_array

# PostgreSQL text never holds NUL; everything else must round-trip.
texts = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)))


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.one_of(st.none(), texts), max_size=8))
def test_any_text_round_trips(engine, values):
    with engine.connect() as conn:
        got = conn.execute(text("SELECT CAST(:a AS text[])"), {"a": pg_array(values)}).scalar_one()
    assert got == values


@settings(max_examples=100, deadline=None)
@given(ints=st.lists(st.one_of(st.none(), st.integers(-2**63, 2**63 - 1)), max_size=8),
       bools=st.lists(st.one_of(st.none(), st.booleans()), max_size=8))
def test_integers_and_booleans_round_trip(engine, ints, bools):
    with engine.connect() as conn:
        row = conn.execute(text("SELECT CAST(:i AS bigint[]) AS i, CAST(:b AS boolean[]) AS b"),
                           {"i": pg_array(ints), "b": pg_array(bools)}).one()
    assert row.i == ints and row.b == bools


def test_json_documents_as_jsonb_array(engine):
    docs = ['{"a": "x\\"y", "b": [1, 2]}', None, '"\\\\"']
    with engine.connect() as conn:
        got = conn.execute(text("SELECT CAST(:d AS jsonb[])"), {"d": pg_array(docs)}).scalar_one()
    assert got == [{"a": 'x"y', "b": [1, 2]}, None, "\\"]
