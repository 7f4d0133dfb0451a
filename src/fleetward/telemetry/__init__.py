"""Telemetry: one event schema for everything fleetward observes about devices.

The public face. Operators post and query events (:func:`post_events`,
:func:`query`); the other domains write theirs (:func:`record_events`: the
verifier's verdicts, the broker's denials, the devices' OTA steps) and read
them back set-based (the detectors' :func:`events_after`,
:func:`recent_events`, :func:`last_seen`; a response run's
:func:`online_devices`). The runtime runs :class:`MqttIngest` and
:func:`prune`. The events table stays inside this package.
"""

from fleetward.telemetry._events import (
    ONLINE_WINDOW,
    event_counts,
    events_after,
    head_event_id,
    last_seen,
    last_seen_of,
    online_devices,
    recent_events,
    record_events,
    tenant_changed_since,
)
from fleetward.telemetry._verdicts import verdict_cohorts
from fleetward.telemetry.ingest import Ingestor, MqttIngest
from fleetward.telemetry.models import Event
from fleetward.telemetry.service import (
    MAX_EVENTS_PER_REQUEST,
    RETENTION,
    post_device_events,
    post_events,
    prune,
    query,
)

__all__ = [
    "MAX_EVENTS_PER_REQUEST",
    "ONLINE_WINDOW",
    "RETENTION",
    "Event",
    "Ingestor",
    "MqttIngest",
    "event_counts",
    "events_after",
    "head_event_id",
    "last_seen",
    "last_seen_of",
    "online_devices",
    "post_device_events",
    "post_events",
    "prune",
    "query",
    "recent_events",
    "record_events",
    "tenant_changed_since",
    "verdict_cohorts",
]
