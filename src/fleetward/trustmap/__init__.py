"""Trust map and threat model as code.

See ``docs/trustmap.md``. A trust map (:mod:`.schema`) is a product's
declared answers to the five trust questions; :mod:`.threats` generates a
STRIDE threat model from it, scored, with the declared and confirmed
controls as mitigations, and draws its data-flow diagram; :mod:`.checks`
compares a map with :class:`LiveFacts` and names each drift. All are pure.
One read of the registered maps is here too, for the operator console:
:func:`maps_overview` (each product's current map and its latest check,
:mod:`.maps`).
"""

from fleetward.trustmap.checks import CheckResult, Drift, LiveFacts, LiveRole, check
from fleetward.trustmap.maps import MapOverview, StoredCheck, maps_overview
from fleetward.trustmap.schema import SCHEMA_VERSION, TrustMap, json_schema, load
from fleetward.trustmap.threats import ThreatModel, model, to_dot, to_json, to_markdown

__all__ = [
    "SCHEMA_VERSION",
    "CheckResult",
    "Drift",
    "LiveFacts",
    "LiveRole",
    "MapOverview",
    "StoredCheck",
    "ThreatModel",
    "TrustMap",
    "check",
    "json_schema",
    "load",
    "maps_overview",
    "model",
    "to_dot",
    "to_json",
    "to_markdown",
]
