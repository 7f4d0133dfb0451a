"""The operator console: server-rendered pages on the operator plane.

The public face: :data:`router` (every console page; the operator app
includes it), the session cookie's name and the request-state key the
authentication gate fills (:mod:`._viewer`), and the renderer the sign-in
routes use. See docs/console.md for what each page shows.

How it fits together:

- **Sign-in** (``fleetward.api.routes.console``) exchanges an API token for
  a console session (:mod:`fleetward.tenancy.sessions`): an HttpOnly,
  ``SameSite=Strict`` cookie.
- **Pages** (``pages/``) are rendered here from the domain services, one
  read-only session each (:func:`._page.show`), for the session's tenant
  and role; an action is offered only when the role and scope allow it.
- **Actions** are not console routes: the script (``static/console.js``)
  calls the REST API with the session cookie and the session's CSRF token in
  ``X-CSRF-Token``, which the gate requires of every cookie-authenticated API
  call; the API checks, audits and refuses exactly as it does for a token,
  and the page shows its problem detail.
- **Live updates** (:mod:`.events`): a server-sent event stream says when the
  tenant's state changed; the script then fetches the page's main block again.
- **No network**: every asset ships in the package (:mod:`.assets`) and the
  Content-Security-Policy allows this origin only.
"""

from fastapi import APIRouter

from fleetward.web import assets, events
from fleetward.web._page import NAV
from fleetward.web._render import CSP, SECURITY_HEADERS, render
from fleetward.web._viewer import COOKIE, LOGIN, VIEWER, Viewer, viewer
from fleetward.web.events import close_streams
from fleetward.web.pages import ROUTERS

__all__ = [
    "COOKIE",
    "CSP",
    "LOGIN",
    "NAV",
    "SECURITY_HEADERS",
    "VIEWER",
    "Viewer",
    "close_streams",
    "render",
    "router",
    "viewer",
]

router = APIRouter(include_in_schema=False)
router.include_router(assets.router)
router.include_router(events.router)
for _pages in ROUTERS:
    router.include_router(_pages)
