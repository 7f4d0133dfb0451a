"""The pure parts of a run: plan rules, the step registry, requirements (no database)."""

from __future__ import annotations

import pytest

from fleetward.errors import ConflictError, InvalidInputError, PermissionDeniedError
from fleetward.response import plan
from fleetward.response import playbook as pb
from fleetward.response.compliance import Requirement
from fleetward.response.steps import STEPS

SPEC = pb.parse(
    """
name: revoke-batch
params: {batch: null}
cohort: {batch: "{batch}"}
confirm_above: 2
steps:
  - {action: quarantine}
  - {action: revoke, reason: keyCompromise}
"""
)


def test_every_action_but_the_webhook_has_one_handler() -> None:
    assert set(STEPS) | {"webhook"} == set(pb.ACTIONS)


@pytest.mark.parametrize(
    ("requirement", "text"),
    [(Requirement.ca(7), "ca:7"), (Requirement.campaign(12, "2.0.1"), "campaign:12:2.0.1")],
)
def test_requirements_read_back_what_they_wrote(requirement: Requirement, text: str) -> None:
    assert str(requirement) == text
    assert Requirement.parse(text) == requirement


@pytest.mark.parametrize("text", ["", "ca:", "ca:x", "ca:7:1.0", "campaign:3", "cert:1", "ca:0"])
def test_a_requirement_this_module_did_not_write_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="requirement"):
        Requirement.parse(text)


def test_a_requirement_validates_its_fields() -> None:
    with pytest.raises(TypeError):
        Requirement("ca", "7")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="names a version"):
        Requirement("ca", 7, "1.0")


def test_drill_incidents_act_on_the_drill_environment_only() -> None:
    plan.check_incident(incident_id=1, state="open", drill=True, environment="drill")
    with pytest.raises(PermissionDeniedError, match="drill environment only"):
        plan.check_incident(incident_id=1, state="open", drill=True, environment="production")
    with pytest.raises(InvalidInputError, match="open the incident as a drill"):
        plan.check_incident(incident_id=1, state="open", drill=False, environment="drill")
    with pytest.raises(ConflictError, match="closed"):
        plan.check_incident(incident_id=1, state="closed", drill=False, environment="production")


def _approve(actor: str, approvals: list[str]) -> list[str]:
    return plan.add_approval(
        actor=actor, approvals=approvals, run_id=3, state="awaiting-approval",
        requested_by="alice", incident_id=1, incident_state="open",
    )  # fmt: skip


def test_approvals_come_from_others_once_each() -> None:
    assert _approve("bob", []) == ["bob"]
    with pytest.raises(PermissionDeniedError, match="planned"):
        _approve("alice", [])
    with pytest.raises(ConflictError, match="already approved"):
        _approve("bob", ["bob"])


def test_only_a_ready_run_executes() -> None:
    with pytest.raises(ConflictError, match=r"awaiting-approval \(1 of 2 approvals\)"):
        plan.check_executable(
            run_id=3, state="awaiting-approval", approvals=1, approvals_needed=2,
            incident_id=1, incident_state="open",
        )  # fmt: skip
    plan.check_executable(
        run_id=3, state="ready", approvals=2, approvals_needed=2, incident_id=1,
        incident_state="open",
    )  # fmt: skip


def test_the_blast_radius_counts_and_refuses_without_confirmation() -> None:
    cohort, steps = pb.bind(SPEC, {"batch": 7})
    devices = [(1, "d-1", "active"), (2, "d-2", "quarantined"), (3, "d-3", "active")]
    radius = plan.blast_radius(
        playbook="revoke-batch", version=1, spec=SPEC, cohort=cohort, steps=steps,
        environment="test", devices=devices, online={2}, certificates=["b", "a"],
        population=10, confirm=None,
    )  # fmt: skip
    assert (radius.devices, radius.online, radius.offline) == (3, 1, 2)
    assert radius.states == {"active": 2, "quarantined": 1}
    assert radius.sample_certificates == ["a", "b"] and radius.device_pks == [1, 2, 3]
    assert radius.refusal is not None and "confirm=3" in radius.refusal
    assert radius.approvals_needed == 1
    assert [s["destructive"] for s in radius.steps] == [False, True]
    confirmed = plan.blast_radius(
        playbook="revoke-batch", version=1, spec=SPEC, cohort=cohort, steps=steps,
        environment="test", devices=devices, online=set(), certificates=[],
        population=10, confirm=3,
    )  # fmt: skip
    assert confirmed.refusal is None
