"""Group commit: the messages a worker's threads are handling at the same moment share one
database transaction.

A worker thread hands its validated command to its actor's ``GroupCommit`` and waits.  The
first thread to arrive while no group is running leads: it takes every command waiting (up
to ``max_size``, its own first), runs them in one transaction — set-wise, by the actor's
group handler (``services.wallets.deposit_group``, ``services.challenges.join_group``) —
and commits once, then hands each thread its result and passes the lead to the next
command waiting, if any.  A lone command is a group of one and runs exactly as without grouping
(its own transaction), so a quiet worker pays nothing; under load, the commands that
arrive while one group runs form the next, and its commit, round trips and WAL flush are
shared by all of them.

A group is all or nothing.  When any of its commands raises (a refusal, a conflict, a
database error) the group's transaction rolls back — nothing of it was committed — and
every command of the group runs again *alone*, in its own thread, through the ordinary
path: each one's effect, error, retry or dead letter is exactly what it would have been
without grouping.  A message is acknowledged only after the transaction holding its effect
committed (the thread returns after the commit), so a crash between the commit and the
acknowledgements redelivers messages whose claims are committed: nothing is applied twice.

A thread interrupted while waiting (a time limit) withdraws its command if the group has
not taken it yet, and hands on the lead it was given, so the other threads never wait for
it; if its command was already taken, its effect may commit and the message, redelivered,
finds its claim.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Generic, Sequence, TypeVar

from infra.logs import get_logger
from infra.middleware import metrics

log = get_logger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Grouping:
    """How an actor's commands are grouped (``infra.messaging.command(grouped=...)``).

    Parameters:
      handler: ``handler(uow, commands) -> results``: the whole group at once, each command
        taking effect as the actor's own handler would alone (a property test for each
        holds the two equal); raises when any would be refused.
      key: no two commands of a group share ``key(command)`` (None: no such rule).
      partition: ``GroupCommit``'s: commands of different partitions group apart.
    """

    handler: Callable[[Any, Sequence[Any]], list[Any]]
    key: Callable[[Any], Any] | None = None
    partition: Callable[[Any], Any] | None = None


class _Slot(Generic[T]):
    __slots__ = ("item", "queue", "done", "lead", "taken", "result", "error", "alone")

    def __init__(self, item: T, queue: "_Queue[T]") -> None:
        self.item = item
        self.queue = queue
        self.done = threading.Event()
        self.lead = False  # this thread is to lead the next group
        self.taken = False  # a group has taken this command
        self.result: Any = None
        self.error: BaseException | None = None
        self.alone = False  # the group rolled back: run alone


class _Queue(Generic[T]):
    """The commands of one partition: at most one group of them runs at a time."""

    __slots__ = ("part", "pending", "leading")

    def __init__(self, part: Any) -> None:
        self.part = part
        self.pending: list[_Slot[T]] = []
        self.leading = False


class GroupCommit(Generic[T]):
    """Commands of one actor, grouped into shared transactions.

    Parameters:
      run_group: runs several commands in one transaction and commits; returns their
        results in order, or raises (then nothing was committed).
      run_alone: runs one command in a transaction of its own (the ordinary path).
      max_size: most commands in one group.
      key: no two commands of a group have the same key (the others wait for the next).
      partition: commands of different partitions are grouped apart and their groups run
        at the same time; within a partition one group runs at a time (default: one
        partition).  For commands that would queue on one row lock anyway (the joins of
        one challenge), the partition is that row: its group takes the lock once.
    """

    def __init__(self, run_group: Callable[[Sequence[T]], list[Any]],
                 run_alone: Callable[[T], Any], *, max_size: int,
                 key: Callable[[T], Any] = id, partition: Callable[[T], Any] | None = None,
                 name: str = "") -> None:
        self._run_group = run_group
        self._run_alone = run_alone
        self._key = key
        self._partition = partition
        self._max = max_size
        self._name = name
        self._lock = threading.Lock()
        self._queues: dict[Any, _Queue[T]] = {}

    def submit(self, item: T) -> Any:
        """Run ``item`` (in a group if others are waiting); its result, or its error."""
        part = self._partition(item) if self._partition is not None else None
        with self._lock:
            queue = self._queues.get(part)
            if queue is None:
                queue = self._queues[part] = _Queue(part)
            slot: _Slot[T] = _Slot(item, queue)
            queue.pending.append(slot)
            if not queue.leading:
                queue.leading = slot.lead = True
        try:
            if not slot.lead:
                slot.done.wait()  # for a result, or for the lead
            if slot.lead and not slot.taken:
                self._lead(queue)
        except BaseException:
            self._withdraw(slot)
            raise
        if slot.alone:
            return self._run_alone(item)
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _lead(self, queue: _Queue[T]) -> None:
        with self._lock:  # the first waiting, up to max_size, no two with one key
            batch, rest, keys = [], [], set()
            for s in queue.pending:
                k = self._key(s.item)
                if len(batch) < self._max and k not in keys:
                    keys.add(k)
                    batch.append(s)
                    s.taken = True
                else:
                    rest.append(s)
            queue.pending = rest
        try:
            self._run(batch)
        finally:
            with self._lock:
                self._hand_on(queue)
            for s in batch:
                s.done.set()

    def _hand_on(self, queue: _Queue[T]) -> None:
        """The next one waiting leads the next group; an idle partition is forgotten.
        (Called holding the lock.)"""
        if queue.pending:
            nxt = queue.pending[0]
            nxt.lead = True
            nxt.done.set()
            return
        queue.leading = False
        del self._queues[queue.part]

    def _run(self, batch: list[_Slot[T]]) -> None:
        if len(batch) == 1:  # the leader's own command: the ordinary path, holding the
            only = batch[0]  # lead so that the commands arriving meanwhile form a group
            try:
                only.result = self._run_alone(only.item)
            except Exception as e:
                only.error = e
            return
        try:
            results = self._run_group([s.item for s in batch])
        except Exception as e:  # nothing committed: every command runs alone
            if metrics.GROUP_FALLBACKS is not None:
                metrics.GROUP_FALLBACKS.labels(actor=self._name).inc()
            log.info("group_commit.fallback", actor=self._name, size=len(batch),
                     reason=f"{type(e).__name__}: {e}"[:200])
            for s in batch:
                s.alone = True
            return
        except BaseException as e:  # interrupted mid-group: the others run alone
            for s in batch:
                s.alone = True
            raise e
        if metrics.GROUPED is not None:
            metrics.GROUPED.labels(actor=self._name, size=str(len(batch))).inc()
        for s, r in zip(batch, results):
            s.result = r

    def _withdraw(self, slot: _Slot[T]) -> None:
        """An interrupted waiter: its command leaves the queue unless a group has taken it;
        a lead it was handed goes to the next one waiting."""
        with self._lock:
            queue = slot.queue
            if slot in queue.pending:
                queue.pending.remove(slot)
            if slot.lead and not slot.taken:
                self._hand_on(queue)
