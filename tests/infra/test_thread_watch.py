"""ThreadWatch replaces worker and consumer threads that died while meant to run."""

from __future__ import annotations

from infra.middleware.threads import ThreadWatch


class FakeThread:
    def __init__(self, name, alive=True, running=True):
        self.name, self._alive, self.running = name, alive, running
        self.closed = False

    def is_alive(self):
        return self._alive

    def close(self):
        self.closed = True


class FakeWorker:
    def __init__(self):
        self.workers = [FakeThread("w1"), FakeThread("w2", alive=False),
                        FakeThread("w3", alive=False, running=False)]  # stopped on purpose
        self.consumers = {"q": FakeThread("c-q"), "q.DQ": FakeThread("c-dq", alive=False)}
        self.broker = object()  # where the alert is published
        self.added_workers = 0
        self.added_consumers = []

    def _add_worker(self):
        self.added_workers += 1
        self.workers.append(FakeThread(f"new{self.added_workers}"))

    def _add_consumer(self, queue, *, delay=False):
        self.added_consumers.append((queue, delay))
        self.consumers[queue] = FakeThread(f"new-{queue}")


def test_dead_threads_are_replaced_and_stopped_ones_left_alone(monkeypatch):
    alerts = []
    monkeypatch.setattr("infra.middleware.threads._alert", lambda *a: alerts.append(a))
    watch = ThreadWatch()
    watch.last_errors["w2"] = "AttributeError: 'list' object has no attribute 'get'"
    worker = FakeWorker()
    dead_consumer = worker.consumers["q.DQ"]
    assert watch.check(worker) == 2
    assert worker.added_workers == 1 and [t.name for t in worker.workers][:2] == ["w1", "w3"]
    assert worker.added_consumers == [("q.DQ", True)] and dead_consumer.closed
    assert watch.replaced == 2
    assert alerts[0][0] is worker.broker
    assert alerts[0][1] == "worker" and "AttributeError" in alerts[0][3]
    assert watch.check(worker) == 0  # nothing more to replace


def test_worker_processes_hand_the_gil_over_every_switch_interval(monkeypatch):
    """``SwitchInterval`` sets the worker process's switch interval from the setting (0:
    Python's own is kept)."""
    import sys

    import pytest

    from infra.middleware.threads import SwitchInterval
    from infra.settings import get_settings

    before = sys.getswitchinterval()
    try:
        monkeypatch.setattr(get_settings(), "worker_switch_interval_us", 700)
        SwitchInterval().after_worker_boot(None, None)
        assert sys.getswitchinterval() == pytest.approx(0.0007)
        sys.setswitchinterval(0.005)
        monkeypatch.setattr(get_settings(), "worker_switch_interval_us", 0)
        SwitchInterval().after_worker_boot(None, None)
        assert sys.getswitchinterval() == pytest.approx(0.005)
    finally:
        sys.setswitchinterval(before)
