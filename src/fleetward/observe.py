"""What fleetward counts, for its Prometheus endpoint: one small vocabulary.

Domains report events here; ``fleetward.api.metrics`` exposes them (with the
HTTP and worker metrics it adds) at ``/metrics`` on the operator plane. This
module sits in the bottom layer with ``errors`` and ``config``: any domain
may call it, and it imports no domain.

Rules:

1. **Counted when committed.** An event that belongs to a transaction
   (:func:`enrollment_attempts`, :func:`revocation`) is counted only when its
   session commits; a rollback forgets it, so a counter never shows an
   enrollment the database does not hold.
2. **No tenant data in labels.** Labels are closed sets fixed by the code
   (result, refusal category, route, revocation reason, error code); tenant
   names, device ids, serials and paths never become labels. A value outside
   its set is counted as ``other``, so a caller cannot grow the series.
3. **Per process.** Counters live in this process and start at zero with it
   (Prometheus' ``rate()`` handles restarts). With several API processes
   each keeps its own.

Series (all prefixed ``fleetward_``): ``enrollments_total{result,category,route}``,
``revocations_total{reason}``, ``refusals_total{code}`` (problems the API
answered, by error code), ``telemetry_events_total``,
``telemetry_dropped_total``, ``connected_devices`` (only once a broker
component reports it), and the process collector's ``process_*``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.orm import Session

__all__ = [
    "REGISTRY",
    "connected_devices",
    "enrollment_attempts",
    "refusal",
    "revocation",
    "telemetry",
]

# No ``*_created`` series beside each counter: Prometheus does not need
# them and they double the output (a process-wide prometheus_client switch).
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

OTHER = "other"
MAX_LABEL = 40  # characters of a label value; longer values count as "other"
_LABEL = re.compile(rf"^[A-Za-z0-9._-]{{1,{MAX_LABEL}}}$")
# RFC 5280 reason names as fleetward spells them (identity's revocation reasons).
REVOCATION_REASONS = frozenset(
    {
        "unspecified",
        "keyCompromise",
        "cACompromise",
        "affiliationChanged",
        "superseded",
        "cessationOfOperation",
        "certificateHold",
        "privilegeWithdrawn",
        "aACompromise",
    }
)

_ENROLLMENTS = Counter(
    "fleetward_enrollments",
    "Enrollment attempts recorded, by result, refusal category and route.",
    ["result", "category", "route"],
    registry=REGISTRY,
)
_REVOCATIONS = Counter(
    "fleetward_revocations",
    "Certificates revoked, by reason.",
    ["reason"],
    registry=REGISTRY,
)
_REFUSALS = Counter(
    "fleetward_refusals",
    "Requests the API refused with a problem, by error code.",
    ["code"],
    registry=REGISTRY,
)
_TELEMETRY = Counter(
    "fleetward_telemetry_events",
    "Telemetry events ingested.",
    registry=REGISTRY,
)
_DROPPED = Counter(
    "fleetward_telemetry_dropped",
    "Telemetry events dropped by the per-device rate limit.",
    registry=REGISTRY,
)


class _Connected(Collector):
    """``fleetward_connected_devices``, absent until someone reports it
    (a gauge that read 0 before the broker said anything would be a lie)."""

    def __init__(self) -> None:
        self._value: int | None = None
        self._lock = threading.Lock()

    def set(self, value: int) -> None:
        with self._lock:
            self._value = value

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            value = self._value
        if value is not None:
            yield GaugeMetricFamily(
                "fleetward_connected_devices", "Devices connected to the broker.", value=value
            )


_CONNECTED = _Connected()
REGISTRY.register(_CONNECTED)

_PENDING = "fleetward.observe.pending"


def _after_commit(session: Session) -> None:
    for count in session.info.pop(_PENDING, ()):
        count()


def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)


event.listen(Session, "after_commit", _after_commit)
event.listen(Session, "after_rollback", _after_rollback)


def _on_commit(session: Session, count: Callable[[], None]) -> None:
    session.info.setdefault(_PENDING, []).append(count)


def _label(value: str | None, allowed: Iterable[str] | None = None) -> str:
    if value is None or value == "":
        return "none"
    if allowed is not None:
        return value if value in allowed else OTHER
    return value if _LABEL.match(value) else OTHER


def enrollment_attempts(
    session: Session, outcomes: Iterable[tuple[str, str | None]], *, route: str
) -> None:
    """Count enrollment attempts once ``session`` commits.

    Args:
        session: The session that records them.
        outcomes: ``(result, category)`` per attempt: ``accepted`` or
            ``refused``, and the refusal category (``None`` when accepted).
        route: How they came (``batch``, ``rest``, ``rest-batch``, ``est``, ``cli``).
    """
    counts: dict[tuple[str, str, str], int] = {}
    for result, category in outcomes:
        key = (_label(result, ("accepted", "refused")), _label(category), _label(route))
        counts[key] = counts.get(key, 0) + 1

    def count() -> None:
        for labels, n in counts.items():
            _ENROLLMENTS.labels(*labels).inc(n)

    _on_commit(session, count)


def revocation(session: Session, *, reason: str, count: int = 1) -> None:
    """Count ``count`` certificates revoked for ``reason`` once ``session`` commits."""
    label = _label(reason, REVOCATION_REASONS)
    _on_commit(session, lambda: _REVOCATIONS.labels(label).inc(count))


def refusal(code: str) -> None:
    """Count one refused request by its error code (the API's problem handler)."""
    _REFUSALS.labels(_label(code)).inc()


def telemetry(*, ingested: int = 0, dropped: int = 0, session: Session | None = None) -> None:
    """Count telemetry events written and dropped: once ``session`` commits,
    or at once without one (call it after the write committed)."""

    def count() -> None:
        if ingested > 0:
            _TELEMETRY.inc(ingested)
        if dropped > 0:
            _DROPPED.inc(dropped)

    if session is None:
        count()
    else:
        _on_commit(session, count)


def connected_devices(count: int) -> None:
    """Report how many devices are connected now (the broker component)."""
    _CONNECTED.set(max(0, count))
