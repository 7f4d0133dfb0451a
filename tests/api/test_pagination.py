"""Paging: ``limit`` + opaque ``cursor`` + ``next``, the same on every list.

The cursor codec is pure (tested without a server); the routes are walked
page by page, and a hostile cursor is a 400 problem, never a 500.
"""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from fleetward.api.pagination import MAX_CURSOR_CHARS, decode, encode, page, page_of
from fleetward.errors import InvalidInputError


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_cursor_round_trips_its_key() -> None:
    assert decode(encode((1,)), int) == (1,)
    assert decode(encode((2**63 - 1,)), int) == (2**63 - 1,)
    assert decode(encode(("dev-1",)), str) == ("dev-1",)
    pair = ("2024-01-01T00:00:00+00:00", "fwt1")
    assert decode(encode(pair), str, str) == pair
    assert decode(None, int) is None and decode("", int) is None


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!",  # not base64url
        base64.urlsafe_b64encode(b"not json").decode(),
        encode(("a",)),  # a string where the list pages by an int
        encode((1, 2)),  # two values where it pages by one
        encode((-1,)),
        encode((2**63,)),
        base64.urlsafe_b64encode(b"[true]").decode(),  # bool is not an int here
        base64.urlsafe_b64encode(b'{"k": 1}').decode(),
        "A" * (MAX_CURSOR_CHARS + 1),
    ],
)
def test_a_foreign_cursor_is_refused(cursor: str) -> None:
    with pytest.raises(InvalidInputError, match="cursor"):
        decode(cursor, int)


def test_a_page_says_whether_another_follows() -> None:
    rows = list(range(1, 6))
    first = page(rows[:3], limit=2, key=lambda r: (r,), shape=str)
    assert first.items == ["1", "2"] and decode(first.next, int) == (2,)
    last = page(rows[:2], limit=2, key=lambda r: (r,), shape=str)
    assert last.items == ["1", "2"] and last.next is None
    assert page([], limit=2, key=lambda r: (r,), shape=str).next is None


def test_a_whole_list_pages_in_key_order_in_either_direction() -> None:
    rows = [3, 1, 5, 2, 4]
    for descending, expect in ((False, [1, 2, 3, 4, 5]), (True, [5, 4, 3, 2, 1])):
        seen: list[int] = []
        cursor = None
        while True:
            got = page_of(
                rows,
                cursor=cursor,
                limit=2,
                key=lambda r: (r,),
                kinds=(int,),
                shape=lambda r: r,
                descending=descending,
            )
            seen += got.items
            cursor = got.next
            if cursor is None:
                break
        assert seen == expect


def test_devices_page_through_with_next(client: TestClient, admin_token: str) -> None:
    h = _h(admin_token)
    for n in range(5):
        assert client.post("/api/v1/devices", json={"device_id": f"pg-{n}"}, headers=h).is_success
    seen: list[str] = []
    url = "/api/v1/devices?limit=2"
    pages = 0
    while True:
        resp = client.get(url, headers=h)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert set(body) == {"items", "next"}
        seen += [d["device_id"] for d in body["items"]]
        pages += 1
        if body["next"] is None:
            break
        url = f"/api/v1/devices?limit=2&cursor={body['next']}"
    assert seen == [f"pg-{n}" for n in range(5)] and pages == 3


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/devices",
        "/api/v1/audit/entries",
        "/api/v1/alerts",
        "/api/v1/incidents",
        "/api/v1/drills",
        "/api/v1/telemetry/events",
        "/api/v1/comms/events",
        "/api/v1/releases",
        "/api/v1/tokens",
        "/api/v1/provisioning/attempts",
    ],
)
def test_a_hostile_cursor_is_a_problem_not_a_500(
    client: TestClient, admin_token: str, path: str
) -> None:
    h = _h(admin_token)
    for cursor in ("%00%ff", encode(("x", "y", "z")), "A" * 600):
        resp = client.get(f"{path}?cursor={cursor}", headers=h)
        assert resp.status_code in (400, 422), (path, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")
    assert client.get(f"{path}?limit=0", headers=h).status_code == 422
    assert client.get(f"{path}?limit=100000", headers=h).status_code == 422


def test_an_unknown_state_filter_is_refused(client: TestClient, admin_token: str) -> None:
    resp = client.get("/api/v1/devices?state=bogus", headers=_h(admin_token))
    assert resp.status_code == 422
    assert resp.json()["type"] == "urn:fleetward:problem:invalid-request"
