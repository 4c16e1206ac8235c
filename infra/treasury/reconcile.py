"""Reconciliation: the ledger against what the outside world and our own jobs say.

- ``custody``: a buffer's ledger balance, as of the custodian's latest report, against
  the balance the custodian reports (``custodian_reports``: the chain for USDC, a bank for
  USD; fed by ``ballast treasury custody report`` or a custodian integration).
- ``provider_books``: ``provider:NAME:CUR`` against the provider's own books of Ballast's
  completed orders (``Provider.balances``), for each provider that reports them and holds
  none of our orders right now (an order in flight may complete between its answer and
  ours).
- ``job_ledger``: every job has exactly the ledger transactions its status implies (a
  completed job: its transit and its conversion, whose destination posting is the job's
  amount; a failed or cancelled one: its transit and its return, or nothing).
- ``orphan_transaction``: a conversion transaction whose job does not exist.
- ``orphaned_job`` / ``stuck_job``: a job with a provider but no accepted attempt; a job
  still active after 30 minutes.
- ``transit``: ``transit:CUR`` equals the source amounts of the jobs in flight.

Each check is one SQL statement, so it reads one consistent snapshot.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, text

from domain import accounts
from domain import conversions as conv
from domain.money import CURRENCIES
from infra import providers
from infra.db.tables import accounts as accounts_table
from infra.db.tables import conversion_jobs, custodian_reports
from infra.logs import get_logger
from infra.treasury import store

log = get_logger(__name__)

KEY_PREFIX = "reconciliation:"
LEDGER_KINDS = ("conversion_transit", "conversion", "conversion_return", "conversion_cancel")


@dataclass(frozen=True, slots=True)
class Difference:
    """One thing that does not add up.

    Parameters:
      check: which check found it (see the module's docstring).
      subject: what it is about (an account code, ``job 12``, a transaction id).
      currency: of the amounts, when there are amounts.
      expected: what the other side says (the custodian, the provider, the jobs).
      actual: what the ledger says.
      detail: one line an operator reads.
    """

    check: str
    subject: str
    currency: str | None
    expected: int | None
    actual: int | None
    detail: str

    @property
    def difference(self) -> int | None:
        if self.expected is None or self.actual is None:
            return None
        return self.actual - self.expected

    @property
    def key(self) -> str:
        return f"{KEY_PREFIX}{self.check}:{self.subject}"

    def doc(self) -> dict[str, Any]:
        return {**asdict(self), "difference": self.difference}


def _custody(conn: Connection) -> list[Difference]:
    rows = conn.execute(text(
        "SELECT r.account_type, b.currency, r.balance AS reported, r.as_of, "
        "  (SELECT COALESCE(sum(e.amount), 0) FROM ledger_entries e "
        "   JOIN accounts a ON a.id = e.account_id "
        "   JOIN ledger_transactions t ON t.id = e.transaction_id "
        "   WHERE a.code = CAST(:buffer_prefix AS text) || r.account_type AND t.created_at <= r.as_of) AS ledger "
        "FROM (SELECT DISTINCT ON (account_type) * FROM custodian_reports "
        "      ORDER BY account_type, as_of DESC, id DESC) r "
        "JOIN treasury_buffers b ON b.account_type = r.account_type"),
        {"buffer_prefix": accounts.prefix(accounts.BUFFER)})
    return [Difference("custody", accounts.buffer(r.account_type), r.currency, int(r.reported),
                       int(r.ledger), f"{accounts.buffer(r.account_type)} holds {int(r.ledger)} in the ledger "
                       f"as of {r.as_of.isoformat()}; the custodian reports {int(r.reported)}")
            for r in rows if int(r.reported) != int(r.ledger)]


def provider_reports(engine: Engine) -> dict[str, dict[str, int]]:
    """Each provider's books (outside any transaction: may be HTTP), for those that report."""
    with engine.connect() as conn:
        rows = store.load_providers(conn)
    reports: dict[str, dict[str, int]] = {}
    for row in rows:
        try:
            books = providers.build(row.name, row.kind, row.config, engine).balances()
        except Exception as exc:  # a provider that cannot answer is not reconciled this time
            log.warning("reconcile.provider_unreachable", provider=row.name, error=str(exc)[:200])
            continue
        if books is not None:
            reports[row.name] = books
    return reports


def _provider_books(conn: Connection, reports: dict[str, dict[str, int]]) -> list[Difference]:
    if not reports:
        return []
    j, a = conversion_jobs.c, accounts_table.c
    busy = set(conn.execute(select(j.provider).distinct()
                            .where(j.provider.is_not(None), j.status.in_(list(conv.ACTIVE))))
               .scalars())
    out: list[Difference] = []
    codes = [accounts.provider(p, cur) for p in reports for cur in CURRENCIES if cur in ("USD", "USDC")]
    ledger_side = dict(conn.execute(select(a.code, a.balance).where(a.code.in_(codes))).all())
    for name, books in sorted(reports.items()):
        if name in busy:
            continue
        for cur in ("USD", "USDC"):
            code = accounts.provider(name, cur)
            theirs, ours = int(books.get(cur, 0)), int(ledger_side.get(code, 0))
            if theirs != ours:
                out.append(Difference("provider_books", code, cur, theirs, ours,
                                      f"{code} is {ours} in the ledger; {name}'s books of our "
                                      f"completed orders say {theirs}"))
    return out


_JOB_LEDGER = """
WITH tx AS (
    SELECT (t.metadata->>'job_id')::bigint AS job_id, t.kind, t.id
    FROM ledger_transactions t WHERE t.kind = ANY(:kinds)
), per_job AS (
    SELECT job_id,
           count(*) FILTER (WHERE kind = 'conversion_transit') AS transit,
           count(*) FILTER (WHERE kind = 'conversion') AS converted,
           count(*) FILTER (WHERE kind IN ('conversion_return', 'conversion_cancel')) AS returned,
           array_agg(id ORDER BY id) AS ids
    FROM tx GROUP BY job_id
), delivered AS (
    SELECT (t.metadata->>'job_id')::bigint AS job_id, sum(e.amount) AS amount
    FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id
    JOIN accounts a ON a.id = e.account_id
    JOIN conversion_jobs j ON j.id = (t.metadata->>'job_id')::bigint
    WHERE t.kind = 'conversion' AND a.code = j.destination_account
    GROUP BY 1
)
SELECT j.id, j.status, j.transit_moved, j.destination_amount, j.destination_currency,
       COALESCE(p.transit, 0) AS transit, COALESCE(p.converted, 0) AS converted,
       COALESCE(p.returned, 0) AS returned, d.amount AS delivered
FROM conversion_jobs j LEFT JOIN per_job p ON p.job_id = j.id
LEFT JOIN delivered d ON d.job_id = j.id
WHERE (j.status = 'completed')
   OR COALESCE(p.transit, 0) <> (CASE WHEN j.transit_moved THEN 1 ELSE 0 END)
   OR COALESCE(p.converted, 0) > 0 OR COALESCE(p.returned, 0) > 0
"""


def _job_ledger(conn: Connection) -> list[Difference]:
    out = []
    for r in conn.execute(text(_JOB_LEDGER), {"kinds": list(LEDGER_KINDS)}):
        want = conv.ledger_transactions_of(r.status, r.transit_moved)
        have = (int(r.transit), int(r.converted), int(r.returned))
        if have != want:
            out.append(Difference("job_ledger", f"job {r.id}", None, None, None,
                                  f"conversion job {r.id} is {r.status} but has {have[0]} transit, "
                                  f"{have[1]} conversion, {have[2]} return transaction(s); "
                                  f"expected {want[0]}, {want[1]}, {want[2]}"))
        elif r.status == conv.COMPLETED and int(r.delivered or 0) != int(r.destination_amount or 0):
            out.append(Difference("job_ledger", f"job {r.id}", r.destination_currency,
                                  r.destination_amount, int(r.delivered or 0),
                                  f"conversion job {r.id} delivered {r.destination_amount}, "
                                  f"the ledger credited {int(r.delivered or 0)}"))
    return out


def _orphan_transactions(conn: Connection) -> list[Difference]:
    rows = conn.execute(text(
        "SELECT t.id, t.kind, t.metadata->>'job_id' AS job_id FROM ledger_transactions t "
        "LEFT JOIN conversion_jobs j ON j.id::text = t.metadata->>'job_id' "
        "WHERE t.kind = ANY(:kinds) AND j.id IS NULL"), {"kinds": list(LEDGER_KINDS)})
    return [Difference("orphan_transaction", f"transaction {r.id}", None, None, None,
                       f"ledger transaction {r.id} ({r.kind}) names conversion job "
                       f"{r.job_id or '(none)'}, which does not exist") for r in rows]


def _jobs(conn: Connection) -> list[Difference]:
    out = []
    for r in conn.execute(text(
            "SELECT j.id, j.status, j.provider, j.created_at, j.submitted_at, "
            "  EXISTS (SELECT 1 FROM conversion_attempts a WHERE a.job_id = j.id "
            "          AND a.status = 'accepted') AS held "
            "FROM conversion_jobs j WHERE j.status = ANY(:st) ORDER BY j.id"),
            {"st": list(conv.ACTIVE)}):
        if r.status in conv.WITH_PROVIDER and not r.held:
            out.append(Difference("orphaned_job", f"job {r.id}", None, None, None,
                                  f"conversion job {r.id} is {r.status} but no attempt of "
                                  f"{r.provider} was accepted"))
        since = r.submitted_at or r.created_at
        if conv.is_stale(since, datetime.now(timezone.utc)):
            out.append(Difference("stuck_job", f"job {r.id}", None, None, None,
                                  f"conversion job {r.id} is still {r.status} since "
                                  f"{since.isoformat()}"))
    return out


def _transit(conn: Connection) -> list[Difference]:
    rows = conn.execute(text(
        "SELECT c.cur, COALESCE(a.balance, 0) AS ledger, COALESCE(j.in_flight, 0) AS in_flight "
        "FROM (VALUES ('USD'), ('USDC')) c(cur) "
        "LEFT JOIN accounts a ON a.code = 'transit:' || c.cur "
        "LEFT JOIN (SELECT source_currency, sum(source_amount) AS in_flight FROM conversion_jobs "
        "           WHERE transit_moved AND status = ANY(:st) GROUP BY source_currency) j "
        "  ON j.source_currency = c.cur"), {"st": list(conv.ACTIVE)})
    return [Difference("transit", accounts.transit(r.cur), r.cur, int(r.in_flight), int(r.ledger),
                       f"{accounts.transit(r.cur)} holds {int(r.ledger)}; the jobs in flight account for "
                       f"{int(r.in_flight)}")
            for r in rows if int(r.ledger) != int(r.in_flight)]


def differences(conn: Connection, reports: dict[str, dict[str, int]]) -> list[Difference]:
    """Every difference, given the providers' books (``provider_reports``)."""
    return [*_custody(conn), *_provider_books(conn, reports), *_job_ledger(conn),
            *_orphan_transactions(conn), *_jobs(conn), *_transit(conn)]


def report(conn: Connection, reports: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The document of ``ballast treasury reconcile --json``."""
    found = differences(conn, reports)
    return {"ok": not found, "checked_at": datetime.now(timezone.utc).isoformat(),
            "providers_reporting": sorted(reports), "differences": [d.doc() for d in found]}


def record_custody(conn: Connection, account_type: str, balance: int, by: str,
                   as_of: datetime | None = None) -> dict[str, Any]:
    """The custodian stand-in: a buffer's balance as the custodian reports it."""
    c = custodian_reports.c
    row = conn.execute(insert(custodian_reports).values(
        account_type=account_type, balance=balance, as_of=as_of or func.now(), reported_by=by)
        .returning(c.id, c.as_of)).one()
    return {"report_id": row.id, "account_type": account_type, "balance": balance,
            "as_of": row.as_of.isoformat(), "reported_by": by}
