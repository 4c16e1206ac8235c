"""The treasury's P&L is written once, in the domain (``treasury_outcome`` over
``settle_treasury_match``); the reports sum it in SQL (``PNL_COLUMNS``, the domain's
results and statuses bound as ``PNL_PARAMS``).  Property: for any settled matches, SQL's
sums are the domain's, run by PostgreSQL over the same rows."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from domain.challenges import settle_treasury_match, treasury_outcome
from infra.challenges.repository import PNL_COLUMNS, PNL_PARAMS

#: Each match's user side and its challenge's result (the reports sum over challenges).
matches = st.lists(st.tuples(st.sampled_from(["YES", "NO"]), st.sampled_from(["YES", "NO", "VOID"])),
                   max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stake=st.integers(1, 10**12), played=matches)
def test_the_reports_pnl_is_the_domains(engine, stake, played):
    settled = [settle_treasury_match(stake=stake, user_side=s, result=r) for s, r in played]
    with engine.connect() as conn:
        row = conn.execute(text(
            f"SELECT {PNL_COLUMNS} FROM unnest(CAST(:st AS text[]), CAST(:rs AS text[]), "
            "CAST(:sk AS bigint[]), CAST(:py AS bigint[]), CAST(:pl AS bigint[])) "
            "AS m(status, result, stake, treasury_payout, pnl) WHERE m.status = ANY(:settled)"),
            {**PNL_PARAMS, "st": [m.status for m in settled], "rs": [m.result for m in settled],
             "sk": [stake] * len(settled), "py": [m.payout for m in settled],
             "pl": [m.pnl for m in settled]}).one()
    domain = treasury_outcome(settled, stake)
    assert (row.matches, row.won, row.lost, row.refunded, row.won_amount, row.lost_amount,
            row.refunded_amount, row.payout, row.net_pnl) == (
        domain.matches, domain.won, domain.lost, domain.refunded, domain.won_amount,
        domain.lost_amount, domain.refunded_amount, domain.payout, domain.net_pnl)
