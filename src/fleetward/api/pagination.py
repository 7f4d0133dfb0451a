"""One way to page every list: ``limit`` + an opaque ``cursor`` + ``next``.

A list route answers a :class:`Page`: ``{"items": [...], "next": "<cursor>"}``.
``next`` is ``null`` on the last page; otherwise the client passes it back as
``?cursor=`` for the page that follows, with the same filters. The cursor is
the sort key of the last item returned (base64url of a JSON array), so a page
is a keyset query: rows added or removed meanwhile shift nothing, and a deep
page costs what the first does.

Cursors are opaque to clients but not secret or trusted: the route still
scopes every query to the caller's tenant and role, so a forged cursor can
only move a caller within what it may read. A cursor that does not decode to
the key the route expects is refused (problem ``invalid-input``, 400).

A route pages a service's keyset query by asking for ``limit + 1`` rows
after the cursor's key (:func:`page`), or, for small bounded collections the
service returns whole (CAs, tokens, factories, ...), slices the sorted list
(:func:`page_of`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field

from fleetward.errors import InvalidInputError

__all__ = [
    "MAX_CURSOR_CHARS",
    "Cursor",
    "Key",
    "Limit",
    "Page",
    "decode",
    "encode",
    "page",
    "page_of",
]

MAX_CURSOR_CHARS = 512  # a cursor is one short sort key; a longer one is refused unread
MAX_KEY_STRING = 200  # characters of one string in a key (device ids are at most 64)
MAX_KEY_INT = 2**63 - 1  # keys are BIGINT columns at most
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

T = TypeVar("T")
R = TypeVar("R")

Key = tuple[int | str, ...]
"""A sort key: the column values that order a list, most significant first."""


class Page(BaseModel, Generic[T]):
    """One page of a list."""

    items: list[T]
    next: str | None = Field(
        description="pass as ?cursor= for the next page (same filters); null on the last page"
    )


Cursor = Annotated[
    str | None,
    Query(
        max_length=MAX_CURSOR_CHARS,
        description="the `next` of the previous page; omit for the first page",
    ),
]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="items per page at most")]


def encode(key: Key) -> str:
    """The opaque cursor of ``key``."""
    raw = json.dumps(list(key), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(cursor: str | None, *kinds: type[int] | type[str]) -> Key | None:
    """The key in ``cursor`` (``None`` for no cursor), one value per kind.

    Raises:
        InvalidInputError: not a cursor of this list.
    """
    if cursor is None or cursor == "":
        return None
    bad = InvalidInputError("cursor: not a cursor this list gave out")
    if len(cursor) > MAX_CURSOR_CHARS:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise bad from exc
    if not isinstance(values, list) or len(values) != len(kinds):
        raise bad
    for value, kind in zip(values, kinds, strict=True):
        # bool is an int to Python, never to a cursor.
        if type(value) is not kind:
            raise bad
        if isinstance(value, int) and not 0 <= value <= MAX_KEY_INT:
            raise bad
        if isinstance(value, str) and len(value) > MAX_KEY_STRING:
            raise bad
    return tuple(values)


def page(
    rows: Sequence[R], *, limit: int, key: Callable[[R], Key], shape: Callable[[R], T]
) -> Page[T]:
    """A page from up to ``limit + 1`` rows of a keyset query (the extra row
    only says that another page follows)."""
    more = len(rows) > limit
    kept = rows[:limit]
    return Page(
        items=[shape(r) for r in kept],
        next=encode(key(kept[-1])) if more and kept else None,
    )


def page_of(
    rows: Sequence[R],
    *,
    cursor: str | None,
    limit: int,
    key: Callable[[R], Key],
    kinds: tuple[type[int] | type[str], ...],
    shape: Callable[[R], T],
    descending: bool = False,
) -> Page[T]:
    """A page of a whole list, in ``key`` order (ascending unless ``descending``)."""
    after = decode(cursor, *kinds)
    rows = sorted(rows, key=key, reverse=descending)
    if after is not None:
        rows = [r for r in rows if (key(r) < after if descending else key(r) > after)]
    return page(rows[: limit + 1], limit=limit, key=key, shape=shape)
