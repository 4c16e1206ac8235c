"""``infra.group_commit.GroupCommit`` with plain functions for the transaction: who leads,
what a group holds, what happens when a group fails or a waiter is interrupted."""

from __future__ import annotations

import threading
import time

import pytest

from infra.group_commit import GroupCommit


class Recorder:
    """Groups and lone runs as they happen; a group's or a lone command's work takes
    ``pause`` seconds so that others arrive meanwhile."""

    def __init__(self, pause: float = 0.05, fail_on=None) -> None:
        self.pause, self.fail_on = pause, fail_on
        self.groups: list[list] = []
        self.alone: list = []
        self.running = 0
        self.most_running = 0
        self._lock = threading.Lock()

    def _enter(self):
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)

    def _leave(self):
        with self._lock:
            self.running -= 1

    def group(self, items):
        self._enter()
        try:
            time.sleep(self.pause)
            if self.fail_on is not None and self.fail_on in items:
                raise RuntimeError(f"refused {self.fail_on}")
            self.groups.append(list(items))
            return [f"g:{i}" for i in items]
        finally:
            self._leave()

    def one(self, item):
        self._enter()
        try:
            time.sleep(self.pause)
            if item == self.fail_on:
                raise ValueError(f"refused {item}")
            self.alone.append(item)
            return f"a:{item}"
        finally:
            self._leave()


def _submit_all(gc: GroupCommit, items, stagger: float = 0.0):
    results: dict = {}

    def go(item):
        try:
            results[item] = gc.submit(item)
        except Exception as e:  # noqa: BLE001 - the test looks at what each thread got
            results[item] = e

    threads = []
    for item in items:
        t = threading.Thread(target=go, args=(item,))
        t.start()
        threads.append(t)
        time.sleep(stagger)
    for t in threads:
        t.join(10)
    return results


def test_a_lone_command_runs_alone_and_gets_its_result():
    rec = Recorder(pause=0)
    gc = GroupCommit(rec.group, rec.one, max_size=8)
    assert gc.submit(1) == "a:1"
    assert rec.alone == [1] and rec.groups == []


def test_commands_arriving_while_one_runs_form_the_next_group():
    rec = Recorder(pause=0.1)
    gc = GroupCommit(rec.group, rec.one, max_size=8)
    results = _submit_all(gc, range(6), stagger=0.01)
    # The first runs alone (nobody waited); the five that arrived meanwhile run as one group.
    assert rec.alone == [0]
    assert sorted(sum(rec.groups, [])) == [1, 2, 3, 4, 5]
    assert results == {0: "a:0", **{i: f"g:{i}" for i in range(1, 6)}}
    assert rec.most_running == 1  # one group at a time


def test_a_group_holds_at_most_max_size_and_never_two_of_one_key():
    rec = Recorder(pause=0.1)
    gc = GroupCommit(rec.group, rec.one, max_size=3, key=lambda i: i % 4)
    results = _submit_all(gc, range(12), stagger=0.005)
    assert all(not isinstance(r, Exception) for r in results.values())
    assert sorted(rec.alone + sum(rec.groups, [])) == list(range(12))
    for g in rec.groups:
        assert len(g) <= 3
        assert len({i % 4 for i in g}) == len(g)


def test_a_failing_group_commits_nothing_and_each_command_runs_alone():
    rec = Recorder(pause=0.1, fail_on=3)
    gc = GroupCommit(rec.group, rec.one, max_size=8)
    results = _submit_all(gc, range(5), stagger=0.01)
    assert rec.groups == []  # the group of 1..4 failed as a whole
    assert sorted(rec.alone) == [0, 1, 2, 4]
    assert isinstance(results[3], ValueError)  # its own error, from its own lone run
    assert results[1] == "a:1"


def test_an_interrupted_waiter_withdraws_and_the_others_go_on():
    rec = Recorder(pause=0.2)
    gc = GroupCommit(rec.group, rec.one, max_size=8)
    leader = threading.Thread(target=gc.submit, args=("lead",))
    leader.start()
    time.sleep(0.05)

    class Interrupt(BaseException):
        pass

    interrupted: list = []

    def waiter():
        original = threading.Event.wait

        def wait(self, timeout=None):
            raise Interrupt()  # as a time limit's asynchronous exception would

        threading.Event.wait = wait
        try:
            gc.submit("gone")
        except Interrupt:
            interrupted.append(True)
        finally:
            threading.Event.wait = original

    t = threading.Thread(target=waiter)
    t.start()
    t.join(5)
    leader.join(5)
    assert interrupted == [True]
    assert "gone" not in rec.alone + sum(rec.groups, [])
    assert gc.submit("after") == "a:after"  # the lead was not left with the interrupted one


@pytest.mark.parametrize("n", [2, 9])
def test_every_command_gets_exactly_its_own_result(n):
    rec = Recorder(pause=0.02)
    gc = GroupCommit(rec.group, rec.one, max_size=4)
    results = _submit_all(gc, range(n * 5))
    assert set(results) == set(range(n * 5))
    for item, got in results.items():
        assert got in (f"a:{item}", f"g:{item}")


def test_partitions_group_apart_and_run_at_the_same_time():
    rec = Recorder(pause=0.1)
    gc = GroupCommit(rec.group, rec.one, max_size=8, partition=lambda i: i % 2)
    results = _submit_all(gc, range(10), stagger=0.005)
    assert all(not isinstance(r, Exception) for r in results.values())
    for g in rec.groups:
        assert len({i % 2 for i in g}) == 1  # a group holds one partition's commands
    assert rec.most_running == 2  # the two partitions' groups ran side by side
    assert sorted(rec.alone + sum(rec.groups, [])) == list(range(10))
    assert gc.submit(11) == "a:11"  # an idle partition starts afresh
