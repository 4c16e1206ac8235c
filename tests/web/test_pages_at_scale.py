"""Pages stay fast with real data (issue 15): a market of 100,000 commitments (and as many
distribution lines), a journal cycle of 20,000 participations with thousands of unmatched
and ambiguous payments, and 3,000 dead letters, seeded set-based in the run's PostgreSQL.

Each page is fetched through the real console (Flask's test client on the run's database):
it holds at most one page of rows, its page links lead to the next page and to the last
one, and no SQL statement the page runs returns more than a page's worth of rows (counted
from the driver's cursor for every statement, so a view that loaded everything would fail
here, however fast the machine).  No timing is asserted.
"""

from __future__ import annotations

import html
import inspect
import math
import re
import uuid
from contextlib import contextmanager

import pytest
from sqlalchemy import event, text

from infra.web import queries

from tests.harness import uid
from tests.web.conftest import login

BASE = "https://localhost"
SIZE = 25
COMMITMENTS = 100_000
PARTICIPATIONS = 20_000
UNMATCHED = 2_000
AMBIGUOUS = 600
DEAD = 3_000
#: The most rows any one statement of a page may return: a page plus its look-ahead row
#: (small fixed lists such as a market's options or the queues come well under it).
BOUND = SIZE + 1


@pytest.fixture(scope="module")
def seeded(engine):
    """The big market, cycle and dead letters (removed again afterwards)."""
    m, c = uid("scale-m"), uid("scale-c")
    char = str(770_000_000 + uuid.uuid4().int % 10_000_000)  # a game character id
    dl = uid("scale-dl-")
    with engine.begin() as conn:
        acct = conn.execute(text("INSERT INTO accounts (code, currency, allow_negative) "
                                 "VALUES (:c, 'NGN', false) RETURNING id"),
                            {"c": f"user:{m}:NGN"}).scalar_one()
        txn = conn.execute(text("INSERT INTO ledger_transactions (kind, memo) "
                                "VALUES ('console_scale_seed', 'no entries') RETURNING id")).scalar_one()
        conn.execute(text(
            "INSERT INTO markets (market_id, title, kind, currency, creator_id, creator_fee_bps, "
            "house_fee_bps, status) VALUES (:m, 'The big derby', 'multi', 'NGN', 'creator', 200, "
            "500, 'settled')"), {"m": m})
        conn.execute(text("INSERT INTO market_options VALUES (:m, 'home', 'Home', 0), "
                          "(:m, 'away', 'Away', 1), (:m, 'draw', 'Draw', 2)"), {"m": m})
        conn.execute(text(
            "INSERT INTO market_commitments (commitment_id, market_id, user_id, option_id, method, "
            "amount, status, wallet_account_id, transaction_id, created_at) "
            "SELECT :m || '-k' || lpad(g::text, 6, '0'), :m, 'u' || (g % 5000), "
            "(ARRAY['home', 'away', 'draw'])[1 + g % 3], 'option_id', 1000 + g % 7, 'settled', "
            ":a, :t, timestamptz '2024-01-01 00:00Z' + g * interval '1 second' "
            "FROM generate_series(1, :n) g"), {"m": m, "a": acct, "t": txn, "n": COMMITMENTS})
        dist = conn.execute(text(
            "INSERT INTO market_distributions (market_id, kind, winning_option_id, status, "
            "requested_by, pool, house_fee, creator_fee, winner_pool, winning_total, breakage, "
            "paid, commitments, winners, completed_at) "
            "SELECT :m, 'resolved', 'home', 'completed', 'ops', sum(amount), 0, 0, "
            "sum(amount), sum(amount) FILTER (WHERE option_id = 'home'), "
            "sum(amount) FILTER (WHERE option_id <> 'home'), "
            "sum(amount) FILTER (WHERE option_id = 'home'), count(*), "
            "count(*) FILTER (WHERE option_id = 'home'), now() "
            "FROM market_commitments WHERE market_id = :m RETURNING id"), {"m": m}).scalar_one()
        conn.execute(text(
            "INSERT INTO market_distribution_lines (distribution_id, commitment_id, user_id, "
            "option_id, method, amount, result, share, payout, profit) "
            "SELECT :d, commitment_id, user_id, option_id, method, amount, "
            "CASE WHEN option_id = 'home' THEN 'won' ELSE 'lost' END, 0, "
            "CASE WHEN option_id = 'home' THEN amount ELSE 0 END, "
            "CASE WHEN option_id = 'home' THEN 0 ELSE -amount END "
            "FROM market_commitments WHERE market_id = :m"), {"d": dist, "m": m})

        conn.execute(text("INSERT INTO journal_cycles (cycle_id) VALUES (:c)"), {"c": c})
        conn.execute(text(
            "INSERT INTO journal_characters (character_id, name, role) "
            "VALUES (:ch, 'Logi at scale', 'LOGISTICS')"), {"ch": char})
        conn.execute(text(
            "INSERT INTO journal_participations (participation_id, cycle_id, user_id, "
            "character_name, memo, pledged, created_at) "
            "SELECT :c || '-p' || lpad(g::text, 5, '0'), :c, 'u' || g, 'Pilot' || g, "
            "'ARB ' || :c || ' Pilot' || g, 1000 + g, "
            "timestamptz '2024-01-01 00:00Z' + g * interval '1 second' "
            "FROM generate_series(1, :n) g"), {"c": c, "n": PARTICIPATIONS})
        conn.execute(text(
            "INSERT INTO journal_entries (journal_id, character_id, date, ref_type, amount, reason, "
            "first_party_id, second_party_id, review_state, review_note) "
            "SELECT :c || '-j' || lpad(g::text, 5, '0'), :ch, "
            "timestamptz '2024-01-02 00:00Z' + g * interval '1 second', 'player_donation', "
            "1000 + g, 'no memo', (900000000 + g)::text, :ch, "
            "CASE WHEN g > :u THEN 'ambiguous' END, "
            "CASE WHEN g > :u THEN jsonb_build_object('participation_ids', "
            "jsonb_build_array(:c || '-p00001', :c || '-p00002'), 'score', 80) END "
            "FROM generate_series(1, :n) g"),
            {"c": c, "ch": char, "u": UNMATCHED, "n": UNMATCHED + AMBIGUOUS})

        conn.execute(text(
            "INSERT INTO dead_letters (message_id, queue, actor, request_id, code, reason, body, "
            "retries, dead_lettered_at) "
            "SELECT :p || g, 'ballast.wallets', 'deposit', :p || 'r' || g, 'refused', "
            "'scale test reason ' || g, jsonb_build_object('message_id', :p || g), 3, "
            "now() - g * interval '1 second' FROM generate_series(1, :n) g"),
            {"p": dl, "n": DEAD})
    yield {"market": m, "cycle": c, "dead": dl}
    with engine.begin() as conn:
        # Every referencing row goes too; without the per-row foreign-key checks (each would
        # scan the lines just deleted: market_distribution_lines has no commitment_id index).
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text("DELETE FROM dead_letters WHERE message_id LIKE :p"), {"p": dl + "%"})
        conn.execute(text("DELETE FROM journal_entries WHERE character_id = :ch"), {"ch": char})
        conn.execute(text("DELETE FROM journal_participations WHERE cycle_id = :c"), {"c": c})
        conn.execute(text("DELETE FROM journal_cycles WHERE cycle_id = :c"), {"c": c})
        conn.execute(text("DELETE FROM journal_characters WHERE character_id = :ch"), {"ch": char})
        conn.execute(text("DELETE FROM market_distribution_lines WHERE distribution_id = :d"),
                     {"d": dist})
        conn.execute(text("DELETE FROM market_distributions WHERE id = :d"), {"d": dist})
        conn.execute(text("DELETE FROM market_commitments WHERE market_id = :m"), {"m": m})
        conn.execute(text("DELETE FROM market_options WHERE market_id = :m"), {"m": m})
        conn.execute(text("DELETE FROM markets WHERE market_id = :m"), {"m": m})
        conn.execute(text("DELETE FROM ledger_transactions WHERE id = :t"), {"t": txn})
        conn.execute(text("DELETE FROM accounts WHERE id = :a"), {"a": acct})


@pytest.fixture(scope="module")
def small_app(engine):
    from infra.web.app import create_app
    from infra.web.settings import WebSettings

    return create_app(engine, WebSettings(secret_key="scale-" + "k" * 32, page_size=SIZE))


@pytest.fixture
def client(small_app, make_operator):
    c = small_app.test_client()
    login(c, make_operator("admin"))
    return c


@contextmanager
def rows_fetched(engine):
    """Every statement run on ``engine`` meanwhile, with how many rows it returned."""
    seen: list[tuple[int, str]] = []

    def after(conn, cursor, statement, parameters, context, executemany):
        if cursor.description is not None:  # a statement that returns rows
            seen.append((cursor.rowcount, " ".join(statement.split())[:160]))

    event.listen(engine, "after_cursor_execute", after)
    try:
        yield seen
    finally:
        event.remove(engine, "after_cursor_execute", after)


CHART_POINTS = inspect.signature(queries.balance_history).parameters["points"].default
CHART_SQL = "SELECT ledger_transactions.created_at AS at, accounts.balance - coalesce(sum(e.amount) OVER"


def fetch(client, engine, url: str) -> str:
    """The page at ``url``, asserting that no statement behind it returned more than a page."""
    with rows_fetched(engine) as seen:
        resp = client.get(url if url.startswith("http") else BASE + url)
    assert resp.status_code == 200, resp.get_data(as_text=True)[:2000]
    assert seen, "the page ran no SQL at all"
    # A chart's series is bounded by its own number of points (queries.balance_history),
    # whatever the data; every other statement by one page.
    too_many = [(n, sql) for n, sql in seen
                if n > (CHART_POINTS if sql.startswith(CHART_SQL) else BOUND)]
    assert not too_many, f"statements returned more than a page ({BOUND} rows): {too_many}"
    return resp.get_data(as_text=True)


def rows_of(page: str, table_start: str) -> list[str]:
    """The body rows of the table that starts with ``table_start``."""
    i = page.index(table_start)
    body = page[page.index("<tbody", i):page.index("</tbody>", i)]
    return [r for r in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S) if "colspan" not in r]


def pager(page: str, arg: str) -> dict[str, str]:
    """The links of the pager for page argument ``arg``: rel -> href, plus 'where'."""
    m = re.search(rf'<nav class="pager" data-pager="{arg}"[^>]*>(.*?)</nav>', page, re.S)
    assert m, f"no pager for {arg}"
    links = {rel: html.unescape(href) for rel, href in
             re.findall(r'<a rel="(\w+)" data-page="\d+" href="([^"]+)"', m.group(1))}
    links["where"] = re.sub(r"\s+", " ", re.search(r'class="where">(.*?)</span>', m.group(1),
                                                    re.S).group(1))
    return links


def total_of(where: str) -> int:
    return int(re.search(r"· ([\d,]+) in all", where).group(1).replace(",", ""))


def walk(client, engine, url: str, table: str, arg: str, at_least: int) -> None:
    """Page 1 holds a full page; next is page 2 (other rows); last is the last page, which
    holds the remainder and has no next link."""
    first = fetch(client, engine, url)
    rows1 = rows_of(first, table)
    assert len(rows1) == SIZE
    links = pager(first, arg)
    total = total_of(links["where"])
    assert total >= at_least
    last_n = math.ceil(total / SIZE)
    assert f"page 1 of {last_n}" in links["where"]
    assert f"{arg}=2" in links["next"] and f"{arg}={last_n}" in links["last"]
    assert "first" not in links and "prev" not in links
    second = fetch(client, engine, links["next"])
    rows2 = rows_of(second, table)
    assert len(rows2) == SIZE and not set(rows2) & set(rows1)
    assert f"page 2 of {last_n}" in pager(second, arg)["where"]
    last = fetch(client, engine, links["last"])
    tail = rows_of(last, table)
    assert len(tail) == total - (last_n - 1) * SIZE
    end = pager(last, arg)
    assert "next" not in end and "last" not in end and f"{arg}={last_n - 1}" in end["prev"]


def test_a_market_of_100000_commitments_is_paged(client, engine, seeded):
    url = f"/markets/{seeded['market']}"
    page = fetch(client, engine, url)
    assert "Pool " in page and "100,000" in page  # counted in SQL, not by loading them
    walk(client, engine, url, '<tbody id="lines">', "page", COMMITMENTS)
    walk(client, engine, url, '<table id="commitments">', "cpage", COMMITMENTS)
    tail = fetch(client, engine, f"{url}?cpage={COMMITMENTS // SIZE}")
    # Newest first: the last page ends with the very first commitment.
    assert f"{seeded['market']}-k000001" in rows_of(tail, '<table id="commitments">')[-1]


def test_a_cycle_of_20000_participations_and_its_payments_are_paged(client, engine, seeded):
    url = f"/matching?cycle={seeded['cycle']}"
    walk(client, engine, url, '<table id="participations">', "page", PARTICIPATIONS)
    walk(client, engine, url, '<table id="unmatched">', "upage", UNMATCHED)
    walk(client, engine, url, '<table id="ambiguous">', "apage", AMBIGUOUS)
    page = fetch(client, engine, url)
    assert pager(page, "page")["where"].endswith(f"· {PARTICIPATIONS:,} in all")
    assert pager(page, "apage")["where"].endswith(f"· {AMBIGUOUS:,} in all")
    # Suggestions come from a page's worth of candidates: the same amount as the pledge.
    first = rows_of(page, '<table id="unmatched">')
    assert any(f"{seeded['cycle']}-p" in r and "same_amount" in r for r in first), first[0]
    # Every cycle at once is paged the same way.
    walk(client, engine, "/matching", '<table id="participations">', "page", PARTICIPATIONS)


def test_thousands_of_dead_letters_are_paged(client, engine, seeded):
    walk(client, engine, "/dlq", '<table class="dlq">', "page", DEAD)
    walk(client, engine, "/dlq?queue=ballast.wallets", '<table class="dlq">', "page", DEAD)
    page = fetch(client, engine, "/dlq?queue=ballast.wallets")
    assert "scale test reason 1<" in page  # the newest first


@pytest.mark.parametrize("path", ["/challenges", "/markets", "/treasury", "/alerts?all=1",
                                  "/audit", "/wallets?user=u1"])
def test_every_other_list_reads_one_page(client, engine, seeded, path):
    page = fetch(client, engine, path)
    assert 'class="pager"' in page
