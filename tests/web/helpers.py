"""Signing a TestClient in to the console, for the console's tests."""

from __future__ import annotations

import re

import httpx
from fastapi.testclient import TestClient

__all__ = ["BASE", "csrf_of", "sign_in", "sign_in_http"]

BASE = "http://testserver"
_CSRF = re.compile(r'<meta name="csrf-token" content="([0-9a-f]+)">')
_LOGIN_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def sign_in_http(client: httpx.Client, token: str) -> str:
    """:func:`sign_in` for an httpx client of a live server (``base_url`` set)."""
    return sign_in(client, token, origin=str(client.base_url).rstrip("/"))


def sign_in(
    client: TestClient | httpx.Client, token: str, *, next_path: str = "/", origin: str = BASE
) -> str:
    """Sign ``client`` in with ``token`` (its cookie jar keeps the session);
    returns the session's CSRF token, read from the page it lands on."""
    form = client.get("/login")
    assert form.status_code == 200, form.text
    login_csrf = _LOGIN_CSRF.search(form.text)
    assert login_csrf is not None
    done = client.post(
        "/login",
        data={"token": token, "csrf": login_csrf.group(1), "next": next_path},
        headers={"Origin": origin},
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    page = client.get(done.headers["location"])
    assert page.status_code == 200, page.text
    return csrf_of(page.text)


def csrf_of(html: str) -> str:
    """The session's CSRF token in a console page."""
    found = _CSRF.search(html)
    assert found is not None, "no csrf meta tag on the page"
    return found.group(1)
