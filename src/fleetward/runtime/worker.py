"""One base for every background loop of a running fleetward.

A :class:`PeriodicWorker` runs one *round* of work every ``interval``
seconds in its own daemon thread. The round itself is a domain function
(``publication.publish_crls``, ``detection.runner.detect``, ...) called by a
subclass's :meth:`~PeriodicWorker.work`; the worker owns only the scheduling:

1. **Interval and jitter.** The next round starts ``interval`` seconds after
   the last one ended, stretched or shortened by up to ``jitter`` (a
   fraction), so workers of several processes do not fall into step.
2. **Lease.** A worker with a ``lease`` name runs its work only while this
   worker holds that lease (:mod:`fleetward.store.lease`): with several API
   processes or hosts on one database, the work is done once. The lease is
   renewed once a third of its time to live has passed, and released on a
   clean stop so another holder takes over at once.
3. **Errors.** A round that raises is logged (the logger is named after the
   worker) and the next round waits ``interval * 2**failures`` seconds, at
   most ``max_backoff``; one success resets it.
4. **Stop.** :meth:`~PeriodicWorker.stop` wakes the thread, waits for the
   round in flight, closes the worker's resources and releases its lease.
5. **Tests.** :meth:`~PeriodicWorker.run_once` runs one round in the caller's
   thread (errors propagate); :meth:`~PeriodicWorker.pause` returns once no
   round is in flight and none will start until :meth:`~PeriodicWorker.resume`.
   A paused worker can still be stepped with ``run_once``. No test needs to
   wait for a worker's timing.
6. **Health.** :meth:`~PeriodicWorker.health` is a read-only snapshot (last
   success, lag, last error) for ``/healthz`` and the metrics endpoint.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from fleetward.errors import FleetwardError
from fleetward.store import Database, lease, utcnow

__all__ = ["Every", "PeriodicWorker", "WorkerHealth", "holder_id"]

# How long a round may be overdue before the worker counts as unhealthy,
# unless the worker says otherwise: ten intervals, and never under this.
MIN_STALE_SECONDS = 30.0


def holder_id() -> str:
    """A lease holder name unique to this worker instance (host, process, nonce)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _describe(exc: BaseException) -> str:
    """How health reports an error: a fleetward error with its detail (written
    for users), anything else by its type only, since a database or library
    message may quote rows or paths; the log has the whole story."""
    if isinstance(exc, FleetwardError):
        return f"{type(exc).__name__}: {exc.detail}"[:300]
    return type(exc).__name__


class Every:
    """A part of a round that runs at most once per ``seconds`` (checked with
    :meth:`due`), e.g. the detection sweep inside the detection round.

    Args:
        seconds: The period.
        now: Due at once (the first call to :meth:`due` says so), instead of
            one period after construction.
        clock: Monotonic seconds (tests pass their own).
    """

    def __init__(
        self, seconds: float, *, now: bool = False, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if seconds <= 0:
            raise ValueError("a period must be positive")
        self.seconds = seconds
        self._clock = clock
        self._next = clock() if now else clock() + seconds

    def due(self) -> bool:
        """Whether the period is over; if so, the next one starts now."""
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self.seconds
        return True


@dataclass(frozen=True)
class WorkerHealth:
    """What a worker says about itself (read-only; safe to export).

    ``lag`` is how many seconds the worker is past the moment its next round
    should have completed (0 while on time); ``leader`` is whether it holds
    its lease (``None`` for a worker without one: it always works).
    """

    name: str
    interval: float
    running: bool
    paused: bool
    lease: str | None
    leader: bool | None
    rounds: int
    failures: int
    last_success: dt.datetime | None
    last_error: str | None
    last_error_at: dt.datetime | None
    lag: float
    stale_after: float

    @property
    def healthy(self) -> bool:
        """Running, and paused on purpose or not overdue."""
        return self.running and (self.paused or self.lag <= self.stale_after)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (times as ISO 8601)."""
        out = asdict(self)
        for key in ("last_success", "last_error_at"):
            value = out[key]
            out[key] = value.isoformat() if value is not None else None
        out["lag"] = round(self.lag, 3)
        out["healthy"] = self.healthy
        return out


class PeriodicWorker:
    """A background loop; subclasses implement :meth:`work` (one round).

    Args:
        name: Names the thread, the logger (``fleetward.worker.<name>``) and
            the worker in health reports and metrics.
        interval: Seconds between rounds.
        jitter: Fraction of ``interval`` the wait may vary by (0 to < 1).
        lease: Work only while holding this lease (needs ``db``).
        db: The database holding the lease.
        lease_ttl: Seconds a lease outlives its last renewal (default: three
            intervals, at least 60 s).
        initial_delay: Seconds before the first round (default ``interval``).
        max_backoff: Longest wait after failures.
        stale_after: Lag past which the worker is unhealthy (default ten
            intervals, at least 30 s).
        join_timeout: How long :meth:`stop` waits for the round in flight.
        clock: Monotonic seconds for lag and lease renewal (tests pass their own).

    Raises:
        ValueError: a non-positive interval, a jitter outside [0, 1), or a
            lease without a database.
    """

    def __init__(
        self,
        name: str,
        *,
        interval: float,
        jitter: float = 0.1,
        lease: str | None = None,
        db: Database | None = None,
        lease_ttl: float | None = None,
        initial_delay: float | None = None,
        max_backoff: float = 60.0,
        stale_after: float | None = None,
        join_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"{name}: interval must be positive")
        if not 0 <= jitter < 1:
            raise ValueError(f"{name}: jitter is a fraction in [0, 1)")
        if lease is not None and db is None:
            raise ValueError(f"{name}: a lease needs the database that holds it")
        self.name = name
        self.interval = interval
        self.jitter = jitter
        self.lease = lease
        self.lease_ttl = lease_ttl if lease_ttl is not None else max(3 * interval, 60.0)
        self.initial_delay = interval if initial_delay is None else initial_delay
        self.max_backoff = max(max_backoff, interval)
        self.stale_after = (
            stale_after if stale_after is not None else max(10 * interval, MIN_STALE_SECONDS)
        )
        self.join_timeout = join_timeout
        self.holder = holder_id()
        self._clock = clock
        self.log = logging.getLogger(f"fleetward.worker.{name}")
        self._db = db
        # Not for security: only spreads the rounds of several processes.
        self._random = random.Random()  # noqa: S311
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._paused = threading.Event()
        self._closed = False
        # Held for the whole of a round: pause() and run_once() wait on it.
        self._round_lock = threading.RLock()
        self._renewed_at: float | None = None
        self._leader: bool | None = None if lease is None else False
        self._rounds = 0
        self._failures = 0
        self._since = clock()  # lag counts from here before the first success
        self._last_success: dt.datetime | None = None
        self._last_success_mono: float | None = None
        self._last_error: str | None = None
        self._last_error_at: dt.datetime | None = None

    # -- what subclasses provide ----------------------------------------------

    def work(self) -> None:
        """One round of work (runs only while holding the lease, if any)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the worker opened (connections); called once by :meth:`stop`."""

    # -- control ----------------------------------------------------------------

    @property
    def rounds(self) -> int:
        """Rounds completed (with or without the lease)."""
        return self._rounds

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread (does nothing if it runs already).

        Raises:
            RuntimeError: the worker was stopped (workers are not restarted).
        """
        if self._closed:
            raise RuntimeError(f"worker {self.name} was stopped; make a new one")
        if self.running:
            return
        self._since = self._clock()
        self._thread = threading.Thread(target=self._loop, name=f"fw-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, wait for its round, close resources, release the lease.

        Safe to call more than once, and on a worker never started.
        """
        self._stopping.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.join_timeout)
            if self._thread.is_alive():
                self.log.warning("%s did not stop within %s s", self.name, self.join_timeout)
        if self._closed:
            return
        self._closed = True
        try:
            self.close()
        except Exception:  # stopping must go on for the other workers
            self.log.exception("%s did not close cleanly", self.name)
        if self.lease is not None and self._db is not None and self._leader:
            try:
                lease.release(self._db, name=self.lease, holder=self.holder)
            except Exception:  # it expires on its own
                self.log.exception("lease %s not released", self.lease)
            self._leader = False

    def pause(self) -> None:
        """No new round starts until :meth:`resume`; returns once none is in flight.

        May be called before :meth:`start` (the worker then starts paused).
        """
        self._paused.set()
        with self._round_lock:
            pass

    def resume(self) -> None:
        """Undo :meth:`pause`; the next round starts at once."""
        self._paused.clear()
        self._wake.set()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Paused inside the block, as it was after."""
        was = self._paused.is_set()
        self.pause()
        try:
            yield
        finally:
            if not was:
                self.resume()

    def wake(self) -> None:
        """Start the next round now instead of at its time."""
        self._wake.set()

    def run_once(self) -> bool:
        """One round now, in the caller's thread (also while paused).

        Returns:
            Whether the work ran (``False``: another holder has the lease).

        Raises:
            Exception: whatever the round raised (it is also recorded).
        """
        with self._round_lock:
            return self._round()

    # -- health -------------------------------------------------------------------

    def health(self) -> WorkerHealth:
        """A snapshot of this worker's state."""
        now = self._clock()
        reference = self._last_success_mono if self._last_success_mono is not None else self._since
        lag = max(0.0, now - reference - max(self.interval, self.initial_delay))
        return WorkerHealth(
            name=self.name,
            interval=self.interval,
            running=self.running and not self._stopping.is_set(),
            paused=self._paused.is_set(),
            lease=self.lease,
            leader=self._leader,
            rounds=self._rounds,
            failures=self._failures,
            last_success=self._last_success,
            last_error=self._last_error,
            last_error_at=self._last_error_at,
            lag=lag,
            stale_after=self.stale_after,
        )

    # -- inside -------------------------------------------------------------------

    def _holds_lease(self) -> bool:
        if self.lease is None or self._db is None:
            return True
        mono = self._clock()
        if (
            self._leader
            and self._renewed_at is not None
            and mono - self._renewed_at < self.lease_ttl / 3
        ):
            return True
        held = lease.acquire(
            self._db,
            name=self.lease,
            holder=self.holder,
            ttl=dt.timedelta(seconds=self.lease_ttl),
            now=utcnow(),
        )
        if held != self._leader:
            self.log.info(
                "%s %s lease %s", self.name, "holds" if held else "does not hold", self.lease
            )
        self._leader = held
        self._renewed_at = mono if held else None
        return held

    def _round(self) -> bool:
        try:
            ran = self._holds_lease()
            if ran:
                self.work()
        except Exception as exc:
            self._failures += 1
            self._last_error = _describe(exc)
            self._last_error_at = utcnow()
            raise
        # A round without the lease counts as a success: the loop is alive
        # and another holder does the work (``leader`` tells them apart).
        self._rounds += 1
        self._failures = 0
        self._last_success = utcnow()
        self._last_success_mono = self._clock()
        return ran

    def _delay(self) -> float:
        base = self.interval
        if self._failures:
            base = min(self.interval * 2 ** min(self._failures, 32), self.max_backoff)
        return base * (1 + self._random.uniform(-self.jitter, self.jitter))

    def _loop(self) -> None:
        delay = self.initial_delay
        while True:
            self._wake.wait(delay)
            self._wake.clear()
            if self._stopping.is_set():
                return
            if self._paused.is_set():
                delay = self.interval
                continue
            with self._round_lock:
                if self._paused.is_set() or self._stopping.is_set():
                    continue
                try:
                    self._round()
                except Exception:  # the loop outlives one bad round
                    self.log.exception("%s round failed (%d in a row)", self.name, self._failures)
            delay = self._delay()
