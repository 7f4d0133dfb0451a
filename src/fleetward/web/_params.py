"""Query and path values of the console's pages, checked before any read.

A bad value is an :class:`~fleetward.errors.InvalidInputError` (a 400 page
that does not repeat more than the first 30 characters of it).
"""

from __future__ import annotations

from collections.abc import Collection

from fleetward.errors import InvalidInputError

__all__ = ["MAX_ID", "MAX_QUERY_CHARS", "query_choice", "query_id"]

MAX_ID = 2**63 - 1  # the database's integer keys
MAX_QUERY_CHARS = 100  # a query value longer than this is nobody's id or choice


def query_id(raw: str | None, name: str) -> int | None:
    """A database id from a query or path value (None when absent).

    Raises:
        InvalidInputError: not a positive decimal integer the database holds.
    """
    if raw is None or raw == "":
        return None
    if len(raw) > 19 or not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_ID:
        raise InvalidInputError(f"{name}: a positive integer id, not {raw[:30]!r}")
    return int(raw)


def query_choice(raw: str | None, name: str, choices: Collection[str]) -> str | None:
    """One of ``choices`` from a query value (None when absent or empty).

    Raises:
        InvalidInputError: any other value.
    """
    if raw is None or raw == "":
        return None
    if len(raw) > MAX_QUERY_CHARS or raw not in choices:
        raise InvalidInputError(f"{name} is one of {', '.join(choices)}")
    return raw
