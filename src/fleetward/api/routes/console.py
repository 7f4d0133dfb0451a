"""Signing in to the operator console, and out.

``GET /login`` shows the form; ``POST /login`` takes an API token and, if it
authenticates (rate limited and counted exactly like a token presented to the
API: :func:`~fleetward.api.deps.authenticate_operator`), opens a console
session (:func:`fleetward.tenancy.open_session`) and sets its cookie:
``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page
sends it), ``Path=/``, and ``Secure`` when the operator plane is served over
TLS. ``POST /logout`` ends the session and clears the cookie.

**Sign-in CSRF.** Before a session exists the form is protected by a double
submit: ``GET /login`` sets a random ``fleetward_login`` cookie and puts the
same value in the form; ``POST /login`` refuses a form whose value does not
match its cookie, or whose ``Origin`` is another site. ``POST /logout``
carries the session's own CSRF token.

**Where to after sign-in.** ``next`` is taken only as a path on this server
(one leading ``/``, no scheme, no host, no backslash), so the form cannot be
used to send an operator elsewhere.
"""

from __future__ import annotations

import hmac
import re
import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from fleetward import tenancy, web
from fleetward.api.deps import authenticate_operator, get_ctx, same_origin, source_of
from fleetward.api.ratelimit import limiter_of
from fleetward.errors import FleetwardError, InvalidInputError
from fleetward.tenancy import SESSION_LIFETIME

__all__ = ["LOGIN_COOKIE", "MAX_FORM_FIELD", "router", "safe_next"]

LOGIN_COOKIE = "fleetward_login"  # the sign-in form's double-submit value
MAX_FORM_FIELD = 256  # characters of any sign-in form field (a token is at most 128)
MAX_FORM_BYTES = 4096  # bytes of a sign-in or sign-out form
_NEXT = re.compile(r"^/(?![/\\])[A-Za-z0-9/_\-.~%?=&]{0,200}$")

router = APIRouter(include_in_schema=False)


def safe_next(value: str | None) -> str:
    """``value`` if it is a path on this server, else ``/``."""
    if value and _NEXT.fullmatch(value) and "//" not in value:
        return value
    return "/"


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _login_page(
    request: Request, *, error: str | None, next_path: str, status: int = 200
) -> HTMLResponse:
    nonce = secrets.token_urlsafe(24)
    response = web.render(
        request,
        "login.html",
        {"error": error, "next": next_path, "login_csrf": nonce},
        status=status,
    )
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=3600,
        path="/login",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return response


@router.get(web.LOGIN)
def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    """The sign-in form."""
    return _login_page(request, error=None, next_path=safe_next(next))


async def _form(request: Request) -> dict[str, str]:
    """The posted form's fields (bounded), or refuse it."""
    if int(request.headers.get("content-length") or 0) > MAX_FORM_BYTES:
        raise InvalidInputError("the form is too large")
    try:
        form = await request.form(max_files=0, max_fields=8, max_part_size=MAX_FORM_BYTES)
    except HTTPException as exc:  # starlette's refusal of a form over those limits
        raise InvalidInputError(f"the form is not valid: {exc.detail}") from exc
    out: dict[str, str] = {}
    for key, value in form.multi_items():
        if not isinstance(value, str) or len(value) > MAX_FORM_FIELD:
            raise InvalidInputError(f"the form field {key[:20]!r} is not valid")
        out[key] = value
    return out


def _same_origin(request: Request) -> bool:
    return same_origin(
        request.headers, origin=f"{request.url.scheme}://{request.headers.get('host', '')}"
    )


@router.post(web.LOGIN)
async def login(request: Request) -> Response:
    """Sign in with an API token (see the module docstring)."""
    try:
        fields = await _form(request)
    except (InvalidInputError, ValueError) as exc:  # ValueError: malformed multipart
        return _login_page(request, error=str(exc), next_path="/", status=400)
    next_path = safe_next(fields.get("next"))
    expected = request.cookies.get(LOGIN_COOKIE, "")
    presented = fields.get("csrf", "")
    if not expected or not hmac.compare_digest(expected.encode(), presented.encode()):
        return _login_page(
            request,
            error="the sign-in form expired or came from elsewhere: try again",
            next_path=next_path,
            status=403,
        )
    if not _same_origin(request):
        return _login_page(
            request, error="sign in from this server's own page", next_path=next_path, status=403
        )
    ctx = get_ctx(request)
    token = fields.get("token", "").strip()

    def sign_in() -> str:
        authenticate_operator(  # rate limited, counted and audited like the API's refusals
            ctx,
            limiter_of(request.app),
            token=token or None,
            source=source_of(request.scope),
            path=request.url.path,
        )
        with ctx.db.session() as session:
            _, secret = tenancy.open_session(session, token)
        return secret

    try:
        secret = await run_in_threadpool(sign_in)
    except FleetwardError as exc:
        return _login_page(request, error=exc.detail, next_path=next_path, status=exc.status)
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        web.COOKIE,
        secret,
        max_age=int(SESSION_LIFETIME.total_seconds()),
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Sign out: end the session and clear its cookie, only for a form that
    carries the session's CSRF token (another site's form changes nothing)."""
    secret = request.cookies.get(web.COOKIE)
    try:
        fields = await _form(request)
    except (InvalidInputError, ValueError):
        fields = {}
    if not secret or not hmac.compare_digest(
        fields.get("csrf", "").encode(), tenancy.csrf_token(secret).encode()
    ):
        return RedirectResponse("/", status_code=303)
    ctx = get_ctx(request)

    def sign_out() -> Any:
        with ctx.db.session() as session:
            return tenancy.end_session(session, secret)

    await run_in_threadpool(sign_out)
    response = RedirectResponse(web.LOGIN, status_code=303)
    response.delete_cookie(
        web.COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(request)
    )
    return response
