"""Incident response: playbooks, incidents, compliance tracking and drills.

The public face: playbooks and incidents (:mod:`.service`), runs
(:mod:`.runs`), compliance (:mod:`.compliance`), drills (:mod:`.drills`) and
the live effects a run has outside the database (:mod:`.effects`). The
playbook language (:mod:`.playbook`) and the run rules (:mod:`.plan`) are
pure; a run's cohort is read through the identity and telemetry faces
(:mod:`._cohort`), never their tables.
"""

from fleetward.response._summaries import PlaybookSummary, playbook_summaries
from fleetward.response.compliance import Requirement, stragglers, track
from fleetward.response.drills import SimulatedFleet, get_drill, list_drills, run_drill
from fleetward.response.effects import LiveEffects
from fleetward.response.models import Drill, Incident, IncidentEvent, Playbook, PlaybookRun
from fleetward.response.runs import (
    approve_run,
    dry_run,
    execute_run,
    get_run,
    list_runs,
    start_run,
)
from fleetward.response.service import (
    SEVERITIES,
    close_incident,
    get_incident,
    get_playbook,
    install_standard,
    list_incidents,
    list_playbooks,
    note,
    open_incident,
    put_playbook,
    timeline,
)
from fleetward.response.steps import Effects, ResponseContext

__all__ = [
    "SEVERITIES",
    "Drill",
    "Effects",
    "Incident",
    "IncidentEvent",
    "LiveEffects",
    "Playbook",
    "PlaybookRun",
    "PlaybookSummary",
    "Requirement",
    "ResponseContext",
    "SimulatedFleet",
    "approve_run",
    "close_incident",
    "dry_run",
    "execute_run",
    "get_drill",
    "get_incident",
    "get_playbook",
    "get_run",
    "install_standard",
    "list_drills",
    "list_incidents",
    "list_playbooks",
    "list_runs",
    "note",
    "open_incident",
    "playbook_summaries",
    "put_playbook",
    "run_drill",
    "start_run",
    "stragglers",
    "timeline",
    "track",
]
