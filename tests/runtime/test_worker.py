"""The worker base: rounds, leases, errors, pause and step, stop, health.

Nothing here waits for a worker's timing: rounds are stepped with
``run_once``, and the one test of the thread waits on events the round sets.
"""

from __future__ import annotations

import threading

import pytest

from fleetward.errors import InvalidInputError
from fleetward.runtime.worker import Every, PeriodicWorker
from fleetward.store import Database, lease, utcnow


class Counter(PeriodicWorker):
    def __init__(self, name: str = "counter", **kw: object) -> None:
        super().__init__(name, interval=kw.pop("interval", 0.01), **kw)  # type: ignore[arg-type]
        self.count = 0
        self.fail: Exception | None = None
        self.ran = threading.Event()
        self.closed = 0

    def work(self) -> None:
        self.count += 1
        self.ran.set()
        if self.fail is not None:
            raise self.fail

    def close(self) -> None:
        self.closed += 1


def test_arguments_are_checked(db: Database) -> None:
    with pytest.raises(ValueError, match="interval"):
        Counter(interval=0)
    with pytest.raises(ValueError, match="jitter"):
        Counter(jitter=1.0)
    with pytest.raises(ValueError, match="lease"):
        Counter(lease="x")


def test_run_once_records_success_and_errors() -> None:
    w = Counter()
    assert w.run_once() and w.count == 1
    h = w.health()
    assert h.rounds == 1 and h.failures == 0 and h.last_success is not None
    assert h.last_error is None and h.leader is None
    w.fail = RuntimeError("secret row 42")
    with pytest.raises(RuntimeError):
        w.run_once()
    h = w.health()
    assert h.failures == 1 and h.rounds == 1
    # Foreign errors are reported by type only (their text may quote data).
    assert h.last_error == "RuntimeError" and h.last_error_at is not None
    w.fail = InvalidInputError("bad table value")
    with pytest.raises(InvalidInputError):
        w.run_once()
    assert w.health().last_error == "InvalidInputError: bad table value"
    assert w.health().failures == 2
    w.fail = None
    w.run_once()
    assert w.health().failures == 0


def test_backoff_doubles_up_to_the_cap() -> None:
    w = Counter(interval=1.0, jitter=0.0, max_backoff=5.0)
    w.fail = RuntimeError()
    assert w._delay() == 1.0
    delays = []
    for _ in range(5):
        with pytest.raises(RuntimeError):
            w.run_once()
        delays.append(w._delay())
    assert delays == [2.0, 4.0, 5.0, 5.0, 5.0]


def test_one_holder_of_a_lease_works(db: Database) -> None:
    a = Counter("a", lease="job", db=db)
    b = Counter("b", lease="job", db=db)
    assert a.run_once() and a.count == 1
    assert not b.run_once() and b.count == 0  # a holds it
    assert a.health().leader is True and b.health().leader is False
    assert b.health().last_success is not None  # a standby is alive, not failing
    a.stop()  # a clean stop releases the lease: b takes over at once
    assert b.run_once() and b.count == 1


def test_an_expired_lease_is_taken_over(db: Database) -> None:
    import datetime as dt

    lease.acquire(db, name="job", holder="gone", ttl=dt.timedelta(seconds=-1), now=utcnow())
    w = Counter(lease="job", db=db)
    assert w.run_once()


def test_pause_step_resume_and_stop() -> None:
    w = Counter(interval=0.01)
    w.pause()  # before start: it starts paused
    w.start()
    assert w.health().running and w.health().paused and w.health().healthy
    assert not w.ran.wait(0.2) and w.count == 0  # paused: no round on its own
    assert w.run_once() and w.count == 1  # but it can be stepped
    w.resume()
    w.ran.clear()
    assert w.ran.wait(5)  # resumed: rounds again
    with w.paused():
        seen = w.count
        assert w.count == seen  # nothing in flight, nothing starts
    w.stop()
    w.stop()  # idempotent
    assert not w.health().running and not w.health().healthy
    assert w.closed == 1
    with pytest.raises(RuntimeError, match="stopped"):
        w.start()


def test_a_failing_round_does_not_end_the_loop() -> None:
    w = Counter(interval=0.01, max_backoff=0.02)
    w.fail = RuntimeError("boom")
    w.start()
    try:
        for _ in range(3):
            w.ran.clear()
            assert w.ran.wait(5)
    finally:
        w.stop()
    assert w.health().failures >= 2


def test_lag_counts_past_the_interval() -> None:
    clock = [100.0]
    w = Counter(interval=1.0, stale_after=5.0, clock=lambda: clock[0])
    w.run_once()
    clock[0] += 0.5
    assert w.health().lag == 0.0
    clock[0] += 3.0
    assert w.health().lag == pytest.approx(2.5)
    clock[0] += 10.0
    h = w.health()
    assert h.lag > h.stale_after and not h.healthy


def test_every_is_due_once_per_period() -> None:
    clock = [0.0]
    e = Every(10.0, clock=lambda: clock[0])
    assert not e.due()
    clock[0] = 10.0
    assert e.due() and not e.due()
    now = Every(10.0, now=True, clock=lambda: clock[0])
    assert now.due() and not now.due()
    with pytest.raises(ValueError):
        Every(0)
