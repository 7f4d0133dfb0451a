"""Playbooks as an operator chooses one: what each asks for and does.

The console's incident page offers the tenant's playbooks by name with
their parameters (and defaults), steps and approvals, read from the stored
text through the same parser a run uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from fleetward.response import playbook as pb
from fleetward.response.service import list_playbooks
from fleetward.tenancy.roles import Permission, Principal, require

__all__ = ["PlaybookSummary", "playbook_summaries"]


@dataclass(frozen=True)
class PlaybookSummary:
    """The newest version of one playbook, as a chooser shows it.

    Attributes:
        params: parameter name -> default (``None``: the run must give it).
        steps: the steps' actions, in order.
        approvals: the security approvals a run waits for (0: none).
        destructive: whether a step is destructive.
    """

    name: str
    version: int
    description: str
    params: dict[str, Any]
    steps: tuple[str, ...]
    approvals: int
    confirm_above: int
    destructive: bool


def playbook_summaries(session: Session, principal: Principal) -> list[PlaybookSummary]:
    """The newest version of each of the tenant's playbooks, by name.

    Raises:
        PermissionDeniedError: the role may not read devices (nor incidents).
    """
    require(principal, Permission.DEVICE_READ)
    out = []
    for row in list_playbooks(session, principal):
        spec = pb.parse(row.source)  # stored only after it parsed (put_playbook)
        out.append(
            PlaybookSummary(
                name=row.name,
                version=row.version,
                description=spec.description,
                params=dict(spec.params),
                steps=tuple(str(s["action"]) for s in spec.steps),
                approvals=pb.approvals_needed(spec),
                confirm_above=spec.confirm_above,
                destructive=spec.destructive,
            )
        )
    return out
