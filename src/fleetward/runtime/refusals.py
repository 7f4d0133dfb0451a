"""Refused requests recorded as counts: one record per key and window.

A refusal (a bad credential, a refused renewal, junk attestation evidence)
must leave a trace, but a flood of them must not become a flood of audit
entries or event rows: each would be a write transaction (and, for audit
entries, a link of the hash chain). :class:`RefusalTally` decides which
refusals are written and which are counted:

1. A refusal belongs to a **key**: what was refused, for whom, why
   (:class:`RefusalKey`: the kind of record, tenant, actor or source,
   action, subject, and a reason from a closed set: an error code, or one of
   the fixed token-refusal messages; never a path or other caller text).
2. The first refusal of a key opens a window of ``window`` seconds and is
   **recorded at once**, with its own details (unless it is a count-only
   refusal, such as a 429 of a limited source: those are never written one
   by one).
3. Further refusals of the key in its window are **counted in memory**.
4. When the window has ended, its count (if any) is **flushed** as one
   record whose ``count`` is the number of refusals it stands for, with
   ``window_start`` and ``window_end``. Windows are flushed by the next
   refusal after they end (:meth:`RefusalTally.due`), by a periodic call,
   and at shutdown (:meth:`RefusalTally.drain`). A crash loses at most the
   counts of the open windows (the first refusal of each is on record).
5. Memory is bounded: at most :data:`MAX_TRACKED_REFUSALS` keys; refusals of
   new keys past it are counted under one overflow key per kind and action
   (actor and subject ``overflow``), so nothing goes uncounted.

The sum of ``count`` over a key's records is the number of its refusals.
The tally is pure (``now`` is passed in); :class:`fleetward.runtime.context.AppContext`
writes what it returns.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["MAX_TRACKED_REFUSALS", "Flush", "RefusalKey", "RefusalTally"]

# Keys with an open window at once (about 300 bytes each).
MAX_TRACKED_REFUSALS = 10_000

Kind = Literal["audit", "attestation"]


@dataclass(frozen=True)
class RefusalKey:
    """What a refusal is counted under (rule 1).

    ``kind`` is where its record goes: ``audit`` (an audit entry with
    ``outcome="refused"``) or ``attestation`` (an ``attestation.refused``
    event of the device ``device_pk``).
    """

    kind: Kind
    action: str
    actor: str
    subject: str
    reason: str
    tenant_id: int | None = None
    device_pk: int | None = None


@dataclass(frozen=True)
class Flush:
    """One record to write for the rest of a window (rule 4)."""

    key: RefusalKey
    count: int
    window_start: dt.datetime
    window_end: dt.datetime
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The record's details: the count and the window."""
        return {
            **self.details,
            "count": self.count,
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
        }


@dataclass
class _Window:
    start: dt.datetime
    pending: int = 0
    details: dict[str, Any] = field(default_factory=dict)


class RefusalTally:
    """Which refusals to write now and which to count (module docstring).

    Args:
        window: Seconds per window.
        max_keys: Keys tracked at once (rule 5).
    """

    def __init__(self, *, window: float, max_keys: int = MAX_TRACKED_REFUSALS) -> None:
        if window <= 0 or max_keys < 1:
            raise ValueError("window must be positive and max_keys at least 1")
        self.window = dt.timedelta(seconds=window)
        self.max_keys = max_keys
        self._open: dict[RefusalKey, _Window] = {}
        self._ready: list[Flush] = []  # closed by note(), written by the next due()
        # Refusals are noted from the event loop and from worker threads.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._open)

    def note(
        self,
        key: RefusalKey,
        *,
        now: dt.datetime,
        count_only: bool = False,
        details: dict[str, Any] | None = None,
    ) -> bool:
        """Count one refusal of ``key`` (rules 2, 3 and 5).

        Args:
            key: What was refused.
            now: When.
            count_only: Never write this one on its own (rule 2).
            details: Kept with a window this refusal opens, for its summary
                record (e.g. the source address).

        Returns:
            Whether to record this refusal now (the first of its window).
        """
        with self._lock:
            window = self._open.get(key)
            if window is not None and now - window.start >= self.window:
                self._close(key, end=window.start + self.window)
                window = None
            if window is None and len(self._open) >= self.max_keys:
                key = RefusalKey(key.kind, key.action, "overflow", "overflow", "overflow")
                window = self._open.get(key)
            if window is None:
                self._open[key] = _Window(
                    start=now, pending=1 if count_only else 0, details=dict(details or {})
                )
                return not count_only
            window.pending += 1
            return False

    def due(self, now: dt.datetime) -> list[Flush]:
        """Close the windows that ended by ``now``: the records to write (rule 4)."""
        with self._lock:
            for key, window in list(self._open.items()):
                if now - window.start >= self.window:
                    self._close(key, end=window.start + self.window)
            ready, self._ready = self._ready, []
            return ready

    def drain(self, now: dt.datetime) -> list[Flush]:
        """Close every window (shutdown): the records to write."""
        with self._lock:
            for key, window in list(self._open.items()):
                self._close(key, end=min(now, window.start + self.window))
            ready, self._ready = self._ready, []
            return ready

    def _close(self, key: RefusalKey, *, end: dt.datetime) -> None:
        window = self._open.pop(key)
        if window.pending:
            self._ready.append(
                Flush(
                    key=key,
                    count=window.pending,
                    window_start=window.start,
                    window_end=end,
                    details=window.details,
                )
            )
