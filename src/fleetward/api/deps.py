"""FastAPI dependencies: the app context, the authenticated operator
(:class:`Authorize`, operator plane) and the authenticated device
(:data:`DeviceCaller`, device plane: see :mod:`fleetward.api.device_auth`).

**Authentication, once, before the body.** The gate
(:mod:`fleetward.api.gate`) authenticates every request to a route that
declares :class:`Authorize` or :data:`DeviceCaller` from its headers and
TLS scope, before the app reads its body, with
:func:`authenticate_operator` / :func:`authenticate_device`, and leaves the
caller in the request's state (:data:`PRINCIPAL`, :data:`DEVICE`); the
dependencies below take it from there (and authenticate themselves only in
an app without the gate). Authorization (:func:`fleetward.tenancy.scope.authorize`)
stays in :class:`Authorize`: it depends on the route's action.

**Failed authentication is cheap.** Each failure counts against the source
address and the claimed identity (:mod:`fleetward.api.ratelimit`): past the
limit the request is answered 429 before any database work. Refused
operator credentials are audited as counts (``auth.token`` per source and
reason, ``auth.limited`` for the 429s: see :mod:`fleetward.runtime.refusals`);
refused device certificates are not audited, only counted
(``fleetward_refusals_total``), as before.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping
from typing import Annotated, Any

from cryptography import x509
from fastapi import Depends, Request

from fleetward.api.device_auth import (
    DeviceIdentity,
    authenticate_certificate,
    presented_certificate,
)
from fleetward.api.ratelimit import FailureLimiter, Key, clock, limiter_of
from fleetward.errors import AuthenticationError, PermissionDeniedError, TooManyRequestsError
from fleetward.runtime.context import AppContext
from fleetward.runtime.refusals import RefusalKey
from fleetward.store import utcnow
from fleetward.tenancy import csrf_token, scope, session_principal
from fleetward.tenancy import service as tenancy
from fleetward.tenancy.roles import Principal

__all__ = [
    "CSRF_HEADER",
    "DEVICE",
    "PRINCIPAL",
    "Allow",
    "Authorize",
    "Ctx",
    "DeviceCaller",
    "authenticate_console",
    "authenticate_device",
    "authenticate_operator",
    "authenticate_request",
    "bearer_or_basic",
    "check_csrf",
    "device_identity",
    "get_ctx",
    "refuse_limited_source",
    "same_origin",
    "source_of",
    "token_of",
]

CSRF_HEADER = "x-csrf-token"  # the console session's CSRF token, on cookie-authenticated API calls
PRINCIPAL = "fleetward_principal"  # request state: the operator the gate authenticated
DEVICE = "fleetward_device"  # request state: the device the gate authenticated
MAX_LOGGED_PATH = 200  # characters of a refused request's path kept in its audit entry
MAX_REASON_KEY = 80  # characters of a refusal reason used to group refusals


def get_ctx(request: Request) -> AppContext:
    """The process-wide context."""
    ctx: AppContext = request.app.state.ctx
    return ctx


def token_of(headers: Mapping[str, str]) -> str | None:
    """The token from ``Authorization: Bearer <t>`` or Basic (the password is
    the token); ``""`` for an Authorization header of another shape."""
    header = headers.get("authorization")
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


def bearer_or_basic(request: Request) -> str | None:
    """:func:`token_of` the request's headers."""
    return token_of(request.headers)


def source_of(scope: Mapping[str, Any]) -> str:
    """The request's source address: the client uvicorn established (the raw
    TCP peer, or what a trusted proxy forwarded; see ``fleetward.api.workers``)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _token_id(token: str | None) -> str | None:
    """The public id part of a presented token (its claimed identity)."""
    parts = (token or "").split("_", 2)
    return parts[1][:16] if len(parts) == 3 and parts[1] else None


def _limited_key(exc: TooManyRequestsError, *, source: str) -> RefusalKey:
    """What a 429 of an operator credential is counted under."""
    return RefusalKey(
        kind="audit",
        action="auth.limited",
        actor="anonymous",
        subject=f"source:{source}",
        reason=exc.code,
    )


def _limited(ctx: AppContext, exc: TooManyRequestsError, *, source: str) -> None:
    """Count a 429 of an operator credential in the audit log's counts
    (never an entry per 429: only the window's count is written)."""
    ctx.record_refusal(
        _limited_key(exc, source=source),
        reason=exc.detail,
        window_details={"source": source},
        count_only=True,
    )


def refuse_limited_source(
    ctx: AppContext, limiter: FailureLimiter, *, source: str, operator: bool
) -> None:
    """Refuse a request from a source over its failure limit, in memory only.

    The gate calls this on the event loop before it hands a request to a
    worker thread: a flooding source is answered without a thread hop or a
    database read. Its 429 is counted in the refusal tally (``auth.limited``
    for operator credentials; device refusals are counted in metrics only);
    the tally's counts are written by the gate's periodic flush.

    Raises:
        TooManyRequestsError: the source is over its limit.
    """
    try:
        limiter.check([Key.source(source)], now=clock())
    except TooManyRequestsError as exc:
        if operator:
            ctx.refusals.note(
                _limited_key(exc, source=source),
                now=utcnow(),
                count_only=True,
                details={"source": source},
            )
        raise


def authenticate_operator(
    ctx: AppContext,
    limiter: FailureLimiter,
    *,
    token: str | None,
    source: str,
    path: str,
) -> Principal:
    """Resolve an API token, or count the failure, record the refusal and raise.

    Raises:
        TooManyRequestsError: the source or the token id is over its limit
            (before the token is looked at).
        AuthenticationError: no, a malformed or a bad token.
    """
    claimed = _token_id(token)
    sources = [Key.source(source)]
    identities = [Key.identity("token", claimed)] if claimed is not None else []
    try:
        # A limited source is refused before any database work. A limited
        # token id is not: its real holder's token still authenticates (so
        # whoever learns a token id, which audit entries show, cannot lock
        # its holder out); only its failures turn from 401 into 429.
        limiter.check(sources, now=clock())
    except TooManyRequestsError as exc:
        _limited(ctx, exc, source=source)
        raise
    try:
        if token is None:
            raise AuthenticationError("an API token is required (Authorization: Bearer ...)")
        with ctx.db.read() as session:
            return tenancy.authenticate(session, token)
    except AuthenticationError as exc:
        try:
            limiter.check(identities, now=clock())
        except TooManyRequestsError as limited:
            limiter.failed(sources, now=clock())
            _limited(ctx, limited, source=source)
            raise limited from exc
        limiter.failed(sources + identities, now=clock())
        ctx.record_refusal(
            RefusalKey(
                kind="audit",
                action="auth.token",
                actor="anonymous",
                subject=f"source:{source}",
                # The token refusals' messages are a closed set (tenancy.authenticate).
                reason=exc.detail[:MAX_REASON_KEY],
            ),
            reason=exc.detail,
            details={"token_id": claimed, "path": path[:MAX_LOGGED_PATH]},
            window_details={"source": source},
        )
        raise


def authenticate_console(
    ctx: AppContext, limiter: FailureLimiter, *, secret: str | None, source: str
) -> Principal:
    """The principal of a console session cookie, or count the failure and raise.

    A session that ended, expired or lost its token is an ordinary way for a
    console page to be refused: it is counted against the source (so a
    flood of made-up cookies is limited like made-up tokens), never audited.

    Raises:
        TooManyRequestsError: the source is over its failure limit.
        AuthenticationError: no, an unknown or an ended session.
    """
    sources = [Key.source(source)]
    limiter.check(sources, now=clock())
    try:
        with ctx.db.read() as session:
            return session_principal(session, secret)
    except AuthenticationError:
        limiter.failed(sources, now=clock())
        raise


def check_csrf(headers: Mapping[str, str], *, secret: str, origin: str) -> None:
    """Refuse a cookie-authenticated API call that is not the console's own.

    The call must carry the session's CSRF token in :data:`CSRF_HEADER` (a
    header another site's page cannot set without a CORS grant, which this
    server never gives), and an ``Origin`` or ``Sec-Fetch-Site`` header, when
    the browser sends one, must name this origin.

    Raises:
        PermissionDeniedError: the token is missing or wrong, or the call
            comes from another origin.
    """
    presented = headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(presented.encode(), csrf_token(secret).encode()):
        raise PermissionDeniedError(
            "a console session's API call needs the session's CSRF token (X-CSRF-Token)"
        )
    if not same_origin(headers, origin=origin):
        raise PermissionDeniedError("a console session's API call must come from the console")


def same_origin(headers: Mapping[str, str], *, origin: str) -> bool:
    """Whether a browser's request comes from a page of ``origin``, as far as
    its headers tell: an ``Origin`` naming it (``null``, which a browser sends
    for some same-origin requests, only with ``Sec-Fetch-Site: same-origin``),
    and a ``Sec-Fetch-Site`` of ``same-origin`` or ``none`` when sent. A
    client that sends neither (curl, a script) is not a browser page of
    another site."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    sent_from = headers.get("origin")
    if sent_from == "null":
        return site == "same-origin"
    return sent_from is None or sent_from == origin


def _serial(der: bytes) -> str | None:
    try:
        return format(x509.load_der_x509_certificate(der).serial_number, "x")
    except ValueError:
        return None


def authenticate_device(
    ctx: AppContext,
    limiter: FailureLimiter,
    *,
    scope: Mapping[str, Any],
    headers: Mapping[str, str],
) -> DeviceIdentity:
    """The device of a device-plane request (see :mod:`fleetward.api.device_auth`),
    or count the failure and raise (refusals are not audited).

    Raises:
        TooManyRequestsError: the source or the certificate is over its limit.
        AuthenticationError: no, a malformed or a bad certificate.
    """
    source = source_of(scope)
    keys = [Key.source(source)]
    der: bytes | None = None
    missing: AuthenticationError | None = None
    try:
        der = presented_certificate(scope, headers, trusted_proxies=ctx.settings.trusted_proxies)
    except AuthenticationError as exc:
        missing = exc
    serial = _serial(der) if der is not None else None
    if serial is not None:
        keys.append(Key.identity("certificate", serial))
    limiter.check(keys, now=clock())
    try:
        if der is None:
            raise missing or AuthenticationError("no client certificate")
        with ctx.db.read() as session:
            return authenticate_certificate(session, der)
    except AuthenticationError:
        limiter.failed(keys, now=clock())
        raise


def authenticate_request(request: Request, ctx: AppContext) -> Principal:
    """The operator a request's API token names (:func:`authenticate_operator`)."""
    return authenticate_operator(
        ctx,
        limiter_of(request.app),
        token=bearer_or_basic(request),
        source=source_of(request.scope),
        path=request.url.path,
    )


class Authorize:
    """The dependency an operator route declares: who the caller is, and
    that :func:`fleetward.tenancy.scope.decide` lets it perform ``action`` at
    all (role, factory binding, tenant-wide reach). Services then check the
    action against the objects it touches. The route table test reads
    ``action`` off every route, so a route without one fails it; the gate
    reads it to know the route needs a token.
    """

    def __init__(self, action: scope.Action) -> None:
        self.action = action

    async def __call__(
        self, request: Request, ctx: Annotated[AppContext, Depends(get_ctx)]
    ) -> Principal:
        who: Principal | None = getattr(request.state, PRINCIPAL, None)
        if who is None:  # an app without the gate
            who = authenticate_request(request, ctx)
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
    good certificate. Refusals are 401 problems (429 past the limit),
    counted, not audited."""
    device: DeviceIdentity | None = getattr(request.state, DEVICE, None)
    if device is not None:
        return device
    return authenticate_device(
        ctx, limiter_of(request.app), scope=request.scope, headers=request.headers
    )


DeviceCaller = Annotated[DeviceIdentity, Depends(device_identity)]
