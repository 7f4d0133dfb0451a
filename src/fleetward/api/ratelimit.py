"""A limit on failed authentication, per source and per claimed identity.

Brute force and floods of bad credentials are answered cheaply: each failed
authentication (no, a malformed, an unknown or a wrong credential) counts
against its **source** (the request's client address: the raw TCP peer, or
the address a trusted proxy forwarded, see ``fleetward.api.workers``) and
against the **identity it claimed** (an API token's public id, a device
certificate's serial), each in a fixed window of
``Settings.auth_failure_window`` seconds. A key that reached its limit in the
current window (``auth_failures_per_source`` / ``auth_failures_per_identity``)
is refused with :class:`~fleetward.errors.TooManyRequestsError` (429,
``Retry-After`` = the seconds left in its window). A limited **source** is
refused before its credential is looked at, so a flooding address costs no
database work (a good token from that address waits out the window too: one
address, one budget, as fail2ban-style limits do). A limited **identity** is
not refused outright: the caller's credential is still checked and only a
failure turns from 401 into 429, because identities are not secret (token ids
appear in audit entries) and knowing one must not let anybody lock its holder
out. Successful authentication neither counts nor resets anything, and
another source's or identity's failures never limit it.

Rules, in order:

1. :meth:`FailureLimiter.check` raises when any of the request's keys is at
   its limit in the current window (a key's window starts at its first
   counted failure and ends ``window`` seconds later).
2. :meth:`FailureLimiter.failed` counts one failure against each key.
3. Memory is bounded: at most :data:`MAX_TRACKED_KEYS` keys; the least
   recently failed one is forgotten first (an attacker who sprays identities
   from one source meets rule 1 for the source after its limit, so it cannot
   push out other keys faster than ``auth_failures_per_source`` per window).

The limiter is pure state and arithmetic (``now`` is passed in: monotonic
seconds), one per app (:func:`limiter_of`), per process: with several API
processes each keeps its own counts.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from fastapi import FastAPI

from fleetward.config import Settings
from fleetward.errors import TooManyRequestsError

__all__ = ["MAX_TRACKED_KEYS", "FailureLimiter", "Key", "limiter_of"]

# Keys (sources and claimed identities) tracked at once, per app: about
# 200 bytes each, so the table stays under a few MB however many addresses
# or identities an attacker uses.
MAX_TRACKED_KEYS = 10_000
MAX_KEY_VALUE = 64  # characters of a source address or identity kept in a key


@dataclass(frozen=True)
class Key:
    """What a failure counts against: ``kind`` is ``source`` or an identity
    kind (``token``, ``certificate``), ``value`` the address or the id."""

    kind: str
    value: str

    @classmethod
    def source(cls, address: str) -> Key:
        """The key of a client address."""
        return cls("source", address[:MAX_KEY_VALUE])

    @classmethod
    def identity(cls, kind: str, value: str) -> Key:
        """The key of a claimed identity (``token``: its public id;
        ``certificate``: its serial, hex)."""
        return cls(kind, value[:MAX_KEY_VALUE])


class FailureLimiter:
    """Fixed-window failure counts with two limits (see the module docstring).

    Args:
        per_source: Failures a source may make per window.
        per_identity: Failures a claimed identity may meet per window.
        window: Seconds.
        max_keys: Keys tracked at once (rule 3).
    """

    def __init__(
        self,
        *,
        per_source: int,
        per_identity: int,
        window: float,
        max_keys: int = MAX_TRACKED_KEYS,
    ) -> None:
        if per_source < 1 or per_identity < 1 or max_keys < 1:
            raise ValueError("limits and max_keys must be at least 1")
        if window <= 0:
            raise ValueError("window must be positive")
        self.per_source = per_source
        self.per_identity = per_identity
        self.window = window
        self.max_keys = max_keys
        # key -> [window start, failures in it]; ordered by last failure.
        self._counts: OrderedDict[Key, list[float]] = OrderedDict()
        # The API calls from the event loop and from worker threads.
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> FailureLimiter:
        """The limiter of an installation's settings."""
        return cls(
            per_source=settings.auth_failures_per_source,
            per_identity=settings.auth_failures_per_identity,
            window=settings.auth_failure_window,
        )

    def __len__(self) -> int:
        return len(self._counts)

    def _limit(self, key: Key) -> int:
        return self.per_source if key.kind == "source" else self.per_identity

    def check(self, keys: list[Key], *, now: float) -> None:
        """Rule 1.

        Raises:
            TooManyRequestsError: a key is at its limit; ``retry_after`` is
                the seconds left in the longest of their windows.
        """
        wait = 0.0
        with self._lock:
            for key in keys:
                entry = self._counts.get(key)
                if entry is None or now - entry[0] >= self.window:
                    continue
                if entry[1] >= self._limit(key):
                    wait = max(wait, entry[0] + self.window - now)
        if wait > 0:
            raise TooManyRequestsError(
                "too many failed authentications; try again later",
                retry_after=math.ceil(wait),
            )

    def failed(self, keys: list[Key], *, now: float) -> None:
        """Rule 2 (and rule 3)."""
        with self._lock:
            for key in keys:
                entry = self._counts.get(key)
                if entry is None or now - entry[0] >= self.window:
                    entry = [now, 0.0]
                    self._counts[key] = entry
                entry[1] += 1
                self._counts.move_to_end(key)
            while len(self._counts) > self.max_keys:
                self._counts.popitem(last=False)


def limiter_of(app: FastAPI) -> FailureLimiter:
    """The limiter of ``app`` (made from its context's settings on first use)."""
    limiter: FailureLimiter | None = getattr(app.state, "auth_limiter", None)
    if limiter is None:
        limiter = FailureLimiter.from_settings(app.state.ctx.settings)
        app.state.auth_limiter = limiter
    return limiter


def clock() -> float:
    """Monotonic seconds, the limiter's ``now``."""
    return time.monotonic()
