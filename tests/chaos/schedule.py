"""The fault schedule: a pure function of the seed (and the run's length).

Kinds: ``kill_worker`` (SIGKILL of one worker's process group at a random moment),
``arm_point`` (the worker is restarted with a fault point armed — ``after_commit`` /
``after_publish`` of an actor, or a point inside a step — and SIGKILLs itself there),
``broker_restart`` (a clean stop, or SIGKILL of the node: node loss), ``db_restart``
(``fast`` shutdown, or ``immediate``: crash recovery), ``malformed_burst`` (raw envelopes
of the kinds in ``tests/e2e/test_poison.py``).  Faults are spread over the run, one slot
each; the first four slots hold one of each outage kind, so even a short run sees them all.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

WORKERS = 2  # worker process groups the run keeps
FIRST_AT_S = 8.0  # s: the workload is under way before the first fault
MIN_GAP_S = 12.0  # s between two fault slots: each fault is recovered from before the next

#: Where an armed worker kills itself (infra/faults.py points, with the actor they fire for).
POINTS = (
    "after_commit:deposit", "after_publish:deposit", "after_commit:withdraw",
    "after_commit:join_challenge", "after_commit:resolve_challenge",
    "after_commit:place_commitment", "settle_batch:settle_market", "after_commit:settle_market",
    "after_commit:import_wallet_journal", "after_provider_submit:submit_conversion",
    "after_commit:poll_conversion", "after_commit:run_settlement_cycle",
)

#: Malformed envelopes (a subset of every kind of tests/e2e/test_poison.py).
MALFORMED = (
    "options_list", "options_string", "option_throws", "queue_nobody_consumes",
    "actor_name_list", "actor_name_number", "unknown_actor", "actor_of_another_queue",
    "message_id_number", "timestamp_string", "kwargs_list", "field_too_many", "nul_in_text",
    "not_json", "not_utf8", "json_list", "nan",
)

KINDS = ("kill_worker", "arm_point", "broker_restart", "db_restart", "malformed_burst")
WEIGHTS = (4, 3, 1, 1, 2)


@dataclass(frozen=True)
class Fault:
    at_s: float  # s after the workload starts (not earlier; later if the last fault still recovers)
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fault_schedule(seed: int, duration_s: float) -> list[Fault]:
    """The faults of a run of ``duration_s`` seconds with ``seed``: same inputs, same list."""
    rng = random.Random(f"ballast-chaos:{seed}")
    slots = max(5, int((duration_s - FIRST_AT_S) // MIN_GAP_S))
    gap = max(MIN_GAP_S, (duration_s - FIRST_AT_S) / slots)
    first = ["kill_worker", "broker_restart", "db_restart", "malformed_burst", "arm_point"]
    rng.shuffle(first)
    kinds = first + [rng.choices(KINDS, WEIGHTS)[0] for _ in range(slots - len(first))]
    faults = []
    for i, kind in enumerate(kinds):
        at = round(FIRST_AT_S + i * gap + rng.uniform(0, gap * 0.4), 2)
        faults.append(Fault(at, kind, _detail(rng, kind)))
    return faults


def _detail(rng: random.Random, kind: str) -> dict[str, Any]:
    if kind == "kill_worker":
        return {"worker": rng.randrange(WORKERS)}
    if kind == "arm_point":
        return {"worker": rng.randrange(WORKERS), "point": rng.choice(POINTS)}
    if kind == "broker_restart":
        return {"mode": rng.choice(("stop", "kill")), "down_s": round(rng.uniform(0.5, 3.0), 2)}
    if kind == "db_restart":
        return {"mode": rng.choice(("fast", "immediate")), "down_s": round(rng.uniform(0.5, 3.0), 2)}
    if kind == "malformed_burst":
        return {"cases": rng.sample(MALFORMED, rng.randint(4, 8))}
    raise ValueError(kind)
