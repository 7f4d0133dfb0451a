"""The console's static files, served from the package.

Only the files in :data:`FILES` are served (a fixed table: no path from the
request reaches the filesystem). Each is read once and sent with a strong
``ETag``; the pages reference them with ``?v=<digest>`` so a new release is
never mixed with a cached old script.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request, Response

from fleetward.errors import NotFoundError

__all__ = ["FILES", "PREFIX", "asset_url", "router"]

PREFIX = "/console/assets"
FILES: dict[str, str] = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_CACHE = "public, max-age=86400, immutable"

router = APIRouter(include_in_schema=False)


@cache
def _content(name: str) -> tuple[bytes, str]:
    data = resources.files("fleetward.web").joinpath("static", name).read_bytes()
    return data, hashlib.sha256(data).hexdigest()[:16]


def asset_url(name: str) -> str:
    """The versioned URL of an asset (for templates)."""
    return f"{PREFIX}/{name}?v={_content(name)[1]}"


@router.get(PREFIX + "/{name}")
def asset(name: str, request: Request) -> Response:
    """One of the console's files (404 for anything else)."""
    media = FILES.get(name)
    if media is None:
        raise NotFoundError("no such console asset")
    data, digest = _content(name)
    etag = f'"{digest}"'
    headers = {
        "ETag": etag,
        "Cache-Control": _CACHE,
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Resource-Policy": "same-origin",
    }
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media, headers=headers)
