"""Payment matching: 20,000 participations against 100,000 journal entries.

``value``: payments decided per CPU second by ``domain.matching.match`` (memo lookup, then
the blocked fuzzy search) over the whole set.  ``baseline``: payments decided per CPU
second by ``match_reference`` — the plain nested loop scoring each payment against every one of
the same 20,000 participations — on a random sample of the same payments, in the same
run.  The sample's decisions must be identical on both sides, or the benchmark fails.
``ratio`` is the speed-up.  CPU time (not wall time) because the matcher is
single-threaded pure Python + rapidfuzz and the machine may be shared.

With ``BENCH_MATCHING_DB=1`` the whole run also goes through PostgreSQL (its own
benchmark database): the entries are imported, ``services.journal.match`` links the
payments, deposits into the cycles and writes the events; its time is in the note.

The data is synthetic and seeded: exact, contained and fuzzy memos (some with the wrong
amount), partial payments and top-ups, duplicate participations (ties), memos for
cycles that are not planned, chatter and empty memos.
"""

from __future__ import annotations

import os
import random
import string
import time
from datetime import datetime, timedelta, timezone

from domain.matching import Expectation, Payment, expected_memo, match, match_reference

PARTICIPATIONS = 20_000
PAYMENTS = 100_000
CYCLES = 4
SAMPLE = 150  # payments scored by the nested loop against all participations
SEED = 20240601

SYLLABLES = ["ka", "ra", "vel", "dor", "an", "mi", "tor", "sel", "qu", "ix", "on", "ber", "lo",
             "za", "th", "ri", "gal", "ne", "os", "ur"]


def _name(rnd: random.Random) -> str:
    words = [("".join(rnd.choice(SYLLABLES) for _ in range(rnd.randint(2, 4)))).capitalize()
             for _ in range(rnd.choice([1, 2, 2, 2, 3]))]
    return " ".join(words)[:37]


def _edit(rnd: random.Random, memo: str, edits: int) -> str:
    text = list(memo)
    for _ in range(edits):
        at = rnd.randrange(len(text))
        op = rnd.choice("isd")
        if op == "i":
            text.insert(at, rnd.choice(string.ascii_lowercase))
        elif op == "s":
            text[at] = rnd.choice(string.ascii_lowercase)
        else:
            del text[at]
    return "".join(text)


def dataset(seed: int = SEED) -> tuple[list[Expectation], list[Payment]]:
    rnd = random.Random(seed)
    cycles = [f"cy{seed % 1000}{i}" for i in range(CYCLES)]
    exps = []
    for i in range(PARTICIPATIONS):
        twin = exps and not i % 100  # 1%: the same character twice in a cycle (ties)
        name = exps[-1].character_name if twin else _name(rnd)
        cycle = exps[-1].cycle_id if twin else rnd.choice(cycles)
        exps.append(Expectation(f"p{i}", cycle, name, rnd.randrange(1, 500) * 1_000_000))
    pays = []

    def add(memo: str, amount: int) -> None:
        pays.append(Payment(f"j{len(pays)}", amount, memo))

    for exp in exps:
        roll = rnd.random()
        if roll < 0.60:
            add(exp.memo, exp.pledged)
        elif roll < 0.70:
            add(exp.memo, exp.pledged // 2)  # partial, then topped up below
            add(f"top-up {exp.memo}", exp.pledged - exp.pledged // 2)
        elif roll < 0.78:
            add(f"{rnd.choice(['for', 'invest', 'pls'])} {exp.memo} {rnd.randint(1, 99)}", exp.pledged)
        elif roll < 0.88:
            add(_edit(rnd, exp.memo, rnd.randint(1, 3)), exp.pledged)
        elif roll < 0.92:
            add(_edit(rnd, exp.memo, rnd.randint(1, 3)), exp.pledged + 1)
        elif roll < 0.95:
            add(exp.memo.lower(), exp.pledged * 2)
    while len(pays) < PAYMENTS:
        roll = rnd.random()
        if roll < 0.30:
            add("", rnd.randrange(1, 10**9))
        elif roll < 0.55:
            add(" ".join(rnd.choice(["thanks", "o7", "gift", "for the ship", "isk", "fly safe",
                                     "rent", "srp"]) for _ in range(rnd.randint(1, 4))),
                rnd.randrange(1, 10**9))
        elif roll < 0.80:
            add(expected_memo(f"old{rnd.randint(1, 50)}", _name(rnd)), rnd.randrange(1, 10**9))
        else:
            add("".join(rnd.choice(string.ascii_letters + " ") for _ in range(rnd.randint(5, 30))),
                rnd.randrange(1, 10**9))
    rnd.shuffle(pays)
    return exps, pays


def _through_postgres(exps: list[Expectation], pays: list[Payment]) -> str:
    from bench.common import bench_env
    from infra.contract.journal import JournalEntry
    from infra.db.engine import get_engine
    from services import journal as service
    from infra.journal import repository as repo
    from infra.uow import UnitOfWork

    with bench_env() as env:
        engine = get_engine(env.database_url)
        paid_at = datetime(2024, 6, 1, tzinfo=timezone.utc)
        with engine.begin() as conn:
            repo.register_character(conn, 9001, "Logi", "LOGISTICS")
            for cycle in {e.cycle_id for e in exps}:
                repo.plan_cycle(conn, cycle)
            for e in exps:
                repo.create_participation(conn, e.participation_id, e.cycle_id, "u", e.character_name,
                                          e.pledged)
        started = time.monotonic()
        for at in range(0, len(pays), 5000):
            batch = [JournalEntry(journal_id=p.journal_id, character_id=9001,
                                  date=paid_at + timedelta(seconds=i), ref_type="player_donation",
                                  amount=p.amount, reason=p.memo[:200], first_party_id=7001,
                                  second_party_id=9001)
                     for i, p in enumerate(pays[at:at + 5000], start=at)]
            with engine.begin() as conn:
                repo.import_entries(conn, batch, f"bench-{at}")
        imported = time.monotonic() - started
        started = time.monotonic()
        with UnitOfWork(actor="match_payments", request_id="bench", payload={}, engine=engine) as uow:
            uow.claim()
            tally = service.match(uow)
            uow.commit()
        ran = time.monotonic() - started
    return (f"through PostgreSQL: import {imported:.1f}s, matching run {ran:.1f}s "
            f"(links, deposits, events published) {tally.as_dict()}; ")


def run() -> dict:
    from bench.common import result

    exps, pays = dataset()
    started = time.process_time()
    decisions = match(pays, exps)
    fast = time.process_time() - started

    sample = random.Random(SEED).sample(pays, SAMPLE)
    started = time.process_time()
    reference = match_reference(sample, exps)
    slow = time.process_time() - started
    by_id = {d.journal_id: d for d in decisions}
    same = [by_id[p.journal_id] for p in sample] == reference == match(sample, exps)
    if not same:
        raise AssertionError("the fast matcher decided differently from the nested loop")

    outcomes: dict[str, int] = {}
    for d in decisions:
        key = d.match_type or d.outcome
        outcomes[key] = outcomes.get(key, 0) + 1
    db = _through_postgres(exps, pays) if os.getenv("BENCH_MATCHING_DB") == "1" else ""
    return result(
        "matching",
        len(pays) / fast,
        "payments/s",
        len(sample) / slow,
        f"{len(exps):,} participations x {len(pays):,} journal entries decided in {fast:.2f} CPU s "
        f"{outcomes}; nested loop on {SAMPLE} sampled payments against all participations: "
        f"{slow:.2f} CPU s, same decisions; {db}"
        f"ratio = speed-up per payment",
    )


if __name__ == "__main__":
    import json

    print(json.dumps(run()))
