"""Who is looking: the console's caller, as the authentication gate left it.

The gate (``fleetward.api.gate``) authenticates every console page from its
session cookie before the route runs and leaves a :class:`Viewer` in the
request's state under :data:`VIEWER`; :func:`viewer` hands it to the route.
A page offers an action only when :meth:`Viewer.can` says the role and
scope allow it; the API refuses a forged one all the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from fleetward.errors import AuthenticationError
from fleetward.runtime.context import AppContext
from fleetward.tenancy import Principal, scope

__all__ = ["COOKIE", "LOGIN", "VIEWER", "Viewer", "ViewerDep", "viewer"]

VIEWER = "fleetward_viewer"  # request state: the console caller the gate authenticated
COOKIE = "fleetward_session"  # the session cookie (HttpOnly, SameSite=Strict)
LOGIN = "/login"


@dataclass(frozen=True)
class Viewer:
    """A signed-in console user.

    Attributes:
        principal: The session's token (tenant, role, scope).
        csrf: The session's CSRF token, echoed by the script on every API call.
        session: The session secret (from the cookie; used by the event stream
            to notice that the session ended).
    """

    principal: Principal
    csrf: str
    session: str

    def can(self, action: scope.Action) -> bool:
        """Whether the role and scope allow ``action`` at all (offer it or not)."""
        return scope.decide(self.principal, action).allowed

    @property
    def ctx_label(self) -> str:
        """``tenant · role [· environment] [· factory N]`` for the header."""
        p = self.principal
        parts = [p.tenant_name, p.role]
        if p.environment:
            parts.append(p.environment)
        if p.factory_id is not None:
            parts.append(f"factory {p.factory_id}")
        return " · ".join(parts)


def viewer(request: Request) -> Viewer:
    """The dependency every console page declares (the gate reads it to know
    the route needs a console session)."""
    who: Viewer | None = getattr(request.state, VIEWER, None)
    if who is None:  # an app without the gate
        raise AuthenticationError("no console session: sign in")
    return who


def context(request: Request) -> AppContext:
    """The process-wide context."""
    ctx: AppContext = request.app.state.ctx
    return ctx


ViewerDep = Annotated[Viewer, Depends(viewer)]
