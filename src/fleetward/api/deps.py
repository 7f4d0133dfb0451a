"""FastAPI dependencies: the app context, the authenticated operator
(:class:`Authorize`, operator plane) and the authenticated device
(:data:`DeviceCaller`, device plane: see :mod:`fleetward.api.device_auth`)."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import Depends, Request

from fleetward.api.device_auth import (
    DeviceIdentity,
    authenticate_certificate,
    presented_certificate,
)
from fleetward.audit import service as audit
from fleetward.errors import AuthenticationError
from fleetward.runtime.context import AppContext
from fleetward.tenancy import scope
from fleetward.tenancy import service as tenancy
from fleetward.tenancy.roles import Principal

__all__ = [
    "Allow",
    "Authorize",
    "Ctx",
    "DeviceCaller",
    "bearer_or_basic",
    "device_identity",
    "get_ctx",
]


def get_ctx(request: Request) -> AppContext:
    """The process-wide context."""
    ctx: AppContext = request.app.state.ctx
    return ctx


def bearer_or_basic(request: Request) -> str | None:
    """The token from ``Authorization: Bearer <t>`` or Basic (the password is the token)."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except ValueError:  # binascii.Error, UnicodeDecodeError, or non-ASCII text
            return ""
        return decoded.partition(":")[2]
    return ""


def _token_id(token: str | None) -> str | None:
    """The public id part of a presented token, for the refusal record."""
    parts = (token or "").split("_", 2)
    return parts[1][:16] if len(parts) == 3 else None


def authenticate(ctx: AppContext, token: str | None, *, path: str) -> Principal:
    """Resolve a token or record the refusal and raise."""
    try:
        if token is None:
            raise AuthenticationError("an API token is required (Authorization: Bearer ...)")
        with ctx.db.read() as session:
            return tenancy.authenticate(session, token)
    except AuthenticationError as exc:
        audit.record_refusal(
            ctx.db,
            actor="anonymous",
            action="auth.token",
            subject=f"path:{path}",
            reason=exc.detail,
            details={"token_id": _token_id(token)},
        )
        raise


class Authorize:
    """The dependency an operator route declares: who the caller is, and
    that :func:`fleetward.tenancy.scope.decide` lets it perform ``action`` at
    all (role, factory binding, tenant-wide reach). Services then check the
    action against the objects it touches. The route table test reads
    ``action`` off every route, so a route without one fails it.
    """

    def __init__(self, action: scope.Action) -> None:
        self.action = action

    async def __call__(
        self, request: Request, ctx: Annotated[AppContext, Depends(get_ctx)]
    ) -> Principal:
        who = authenticate(ctx, bearer_or_basic(request), path=request.url.path)
        scope.authorize(who, self.action)
        return who


def Allow(action: scope.Action) -> Any:  # noqa: N802 - reads as a type annotation
    """``who: Annotated[Principal, Allow(scope.DEVICE_READ)]`` on an operator route."""
    return Depends(Authorize(action))


Ctx = Annotated[AppContext, Depends(get_ctx)]


def device_identity(
    request: Request, ctx: Annotated[AppContext, Depends(get_ctx)]
) -> DeviceIdentity:
    """The device a device-plane request comes from: its TLS client
    certificate (or a trusted proxy's header), which must be its current,
    good certificate. Refusals are 401 problems, counted, not audited."""
    der = presented_certificate(
        request.scope, request.headers, trusted_proxies=ctx.settings.trusted_proxies
    )
    with ctx.db.read() as session:
        return authenticate_certificate(session, der)


DeviceCaller = Annotated[DeviceIdentity, Depends(device_identity)]
