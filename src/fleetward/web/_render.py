"""Rendering: Jinja2 templates from the package, autoescaped, with the
console's security headers.

Every page is rendered on the server from the viewer's own data (the domain
services decide what a principal may see, as they do for the API). The
console's script only asks for pages again (live updates, see
``static/console.js``) and calls the REST API for actions.

- **Autoescape everywhere** (``select_autoescape`` on every template) and
  ``StrictUndefined``, so a misspelt variable fails a test instead of
  rendering empty.
- **A strict Content-Security-Policy** (:data:`CSP`): scripts, styles and
  everything fetched come from this origin only; nothing inline, no
  ``eval``; charts are SVG whose colours are presentation attributes, not
  CSS, so no ``style-src 'unsafe-inline'`` either.
- **A partial answer for live updates**: a request with the header
  :data:`PARTIAL_HEADER` gets only the page's ``main`` block, which the
  script swaps in without a reload.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from functools import cache
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from fleetward import observe
from fleetward.errors import FleetwardError
from fleetward.web.assets import asset_url

__all__ = ["CSP", "PARTIAL_HEADER", "SECURITY_HEADERS", "error_page", "render", "templates"]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'; object-src 'none'"
)
"""The console's policy: only this origin, nothing inline; ``form-action``
allows the sign-in and sign-out forms (posted here); ``data:`` images only for
the favicon placeholder."""

SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not no-referrer: under it Chromium sends "Origin: null" on the page's own
    # form posts and fetches, which the sign-in and CSRF checks must refuse.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # pages show live trust state; never from a cache
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
PARTIAL_HEADER = "x-console-partial"
MAIN_START = "<!--fleetward:main-->"  # base.html puts these around the main block
MAIN_END = "<!--/fleetward:main-->"


def _when(value: dt.datetime | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _iso(value: dt.datetime | None) -> str:
    return "" if value is None else value.isoformat()


@cache
def templates() -> Environment:
    """The console's template environment (built once)."""
    env = Environment(
        loader=PackageLoader("fleetward.web", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["iso"] = _iso
    env.globals["asset"] = asset_url
    return env


def _headers(response: HTMLResponse) -> HTMLResponse:
    response.headers.update(SECURITY_HEADERS)
    return response


def render(
    request: Request, template: str, values: Mapping[str, Any], *, status: int = 200
) -> HTMLResponse:
    """``template`` with ``values`` as a page (or its ``main`` block when the
    request asks for the partial answer)."""
    tpl = templates().get_template(template)
    body = tpl.render({"request_path": request.url.path, **values})
    if request.headers.get(PARTIAL_HEADER) == "1":
        # The whole page is rendered (a template's top-level imports and
        # variables then hold inside its blocks) and the main block cut out
        # between the layout's markers.
        start, end = body.find(MAIN_START), body.rfind(MAIN_END)
        if start != -1 and end > start:
            body = body[start + len(MAIN_START) : end]
    return _headers(HTMLResponse(body, status_code=status))


def error_page(request: Request, error: FleetwardError, values: Mapping[str, Any]) -> HTMLResponse:
    """The page of a refused or failed request (counted like an API refusal)."""
    observe.refusal(error.code)
    return render(
        request,
        "error.html",
        {**values, "status": error.status, "title": error.title, "detail": error.detail},
        status=error.status,
    )
