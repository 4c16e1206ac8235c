"""The CLI's output helpers (infra/cli/output.py): pure rendering rules, with hypothesis.

The same rules are proven end to end through the executable in
tests/e2e/test_readable_cli.py; here they are checked over many inputs."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings, strategies as st

from domain.money import CURRENCIES
from infra.cli import output

amounts = st.integers(min_value=-(10**15), max_value=10**15)
currencies = st.sampled_from(sorted(CURRENCIES))


@given(amounts, currencies)
def test_an_amount_is_shown_in_major_units_and_reads_back_exactly(amount, currency):
    shown = output.cell("amount", amount, currency)
    number, code = shown.rsplit(" ", 1)
    assert code == currency
    assert Decimal(number.replace(",", "")) * 10 ** CURRENCIES[currency] == amount
    tsv = output._money_cell("amount", amount, currency, coded=False, tsv=True)
    assert "," not in tsv and " " not in tsv
    assert Decimal(tsv) * 10 ** CURRENCIES[currency] == amount


ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_:.", min_size=1, max_size=40)
words = st.lists(st.text(alphabet="abcdefghij ,.;", min_size=1, max_size=12), max_size=12).map(" ".join)


@settings(max_examples=200)
@given(st.lists(st.tuples(ids, ids, amounts, words), min_size=1, max_size=6),
       st.integers(min_value=40, max_value=120))
def test_a_table_fits_its_width_and_keeps_every_id_whole(rows, limit):
    cols = ["message_id", "request_id", "amount", "reason"]
    cells = [[a, b, output.cell("amount", n, "NGN"), r] for a, b, n, r in rows]
    right = [False, False, True, False]
    whole = [True, True, True, False]
    lines = output._render(cols, cells, right, whole, limit)
    fits = sum(max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols[:3])) \
        + 8 + 6 <= limit
    if fits:
        assert all(len(ln) <= limit for ln in lines), lines
    words_ = {w for ln in lines for w in ln.split()}
    for a, b, n, _ in rows:  # one piece each, never folded
        assert a in words_ and b in words_
        assert output.cell("amount", n, "NGN").split()[0] in words_


def test_times_are_to_the_second_in_utc():
    assert output.cell("at", "2026-12-01T12:52:22.123456+01:00") == "2026-12-01T11:52:22Z"
    assert output.cell("reason", "not a time") == "not a time"
    assert output.timestamp(None) == "-"
