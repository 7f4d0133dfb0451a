"""Detection: pure detectors over telemetry events, alerts and automatic responses.

See ``docs/detection.md``. The public face: alerts and their automatic
responses (:mod:`.service`), what the response domain does with an alert
(:mod:`._alerts`); the runtime schedules :mod:`.runner`'s rounds. The detectors
themselves (:mod:`.detectors`) are pure; the tables stay inside this package.
"""

from fleetward.detection._alerts import (
    first_alert_after,
    get_alert,
    last_alert_id,
    mark_acknowledged,
)
from fleetward.detection._counts import alert_counts
from fleetward.detection._search import ALERT_SEVERITIES, ALERT_STATES, search_alerts
from fleetward.detection.detectors import Finding
from fleetward.detection.models import Alert
from fleetward.detection.service import (
    ACTIONS,
    KINDS,
    alerts_about,
    list_alerts,
    raise_alert,
    responses,
    run,
    set_alert_state,
    set_response,
    sweep,
)

__all__ = [
    "ACTIONS",
    "ALERT_SEVERITIES",
    "ALERT_STATES",
    "KINDS",
    "Alert",
    "Finding",
    "alert_counts",
    "alerts_about",
    "first_alert_after",
    "get_alert",
    "last_alert_id",
    "list_alerts",
    "mark_acknowledged",
    "raise_alert",
    "responses",
    "run",
    "search_alerts",
    "set_alert_state",
    "set_response",
    "sweep",
]
