"""The operator plane's API docs page, served entirely from the package.

FastAPI's default docs page loads Swagger UI from a CDN, unpinned and
without integrity: blank offline, and whatever the CDN serves runs with the
operator's token in reach. This page instead references only files shipped
in ``fleetward/api/static/swagger-ui`` (a pinned ``swagger-ui-dist``
release; ``MANIFEST.json`` records its version, tarball integrity and each
file's SHA-256 and SRI hash). Each ``<script>`` and ``<link>`` carries its
``integrity=``, the initializer is a file rather than an inline script, and
the page's Content-Security-Policy allows nothing but ``'self'``.

Only the files the manifest lists are served (a fixed table, so no path
from the request ever reaches the filesystem).
"""

from __future__ import annotations

import html
import json
from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse

from fleetward.api import problems
from fleetward.errors import NotFoundError

__all__ = ["ASSETS", "CSP", "DOCS", "OPENAPI", "router"]

DOCS = "/api/v1/docs"
ASSETS = DOCS + "/assets"
OPENAPI = "/api/v1/openapi.json"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
"""The docs page's policy: its scripts, styles, images and the document it
fetches all come from this origin; nothing is inline. The one exception,
``data:`` images, is for the 20 SVG icons swagger-ui.css embeds as data URIs
(an image cannot run script)."""
_CACHE = "public, max-age=86400"  # assets change only with a fleetward release

router = APIRouter(include_in_schema=False, responses=problems.PUBLIC)


@cache
def manifest() -> dict[str, Any]:
    """The vendored Swagger UI's ``MANIFEST.json``."""
    text = _package().joinpath("MANIFEST.json").read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _package() -> Any:
    return resources.files("fleetward.api").joinpath("static", "swagger-ui")


@cache
def _asset(name: str) -> bytes:
    return bytes(_package().joinpath(name).read_bytes())


def _page() -> str:
    files = manifest()["files"]

    def sri(name: str) -> str:
        return html.escape(files[name]["integrity"])

    css, bundle, init = "swagger-ui.css", "swagger-ui-bundle.js", "fleetward-docs.js"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>fleetward API</title>
<link rel="icon" type="image/png" href="{ASSETS}/favicon-32x32.png">
<link rel="stylesheet" href="{ASSETS}/{css}" integrity="{sri(css)}">
</head>
<body>
<div id="swagger-ui" data-url="{OPENAPI}"></div>
<script src="{ASSETS}/{bundle}" integrity="{sri(bundle)}"></script>
<script src="{ASSETS}/{init}" integrity="{sri(init)}"></script>
</body>
</html>
"""


@router.get(DOCS)
def docs() -> HTMLResponse:
    """The Swagger UI page for the operator API."""
    return HTMLResponse(
        _page(),
        headers={
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


@router.get(ASSETS + "/{name}")
def asset(name: str) -> Response:
    """One file of the vendored Swagger UI, listed in its manifest."""
    entry = manifest()["files"].get(name)
    if entry is None:
        raise NotFoundError(f"no docs asset {name!r}")
    return Response(
        _asset(name),
        media_type=entry["content_type"],
        headers={"Cache-Control": _CACHE, "X-Content-Type-Options": "nosniff"},
    )
