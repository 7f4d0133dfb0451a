"""Bounded integers for every id, version and counter a request carries.

The database columns behind ids, versions and counters are 64-bit signed
integers (``BIGINT`` on PostgreSQL, ``INTEGER`` on SQLite), and both drivers
raise when a bound parameter does not fit: sqlite3 an ``OverflowError``,
psycopg a ``NumericValueOutOfRange``. A request that carries
``99999999999999999999`` in a path, a query or a body field must therefore
be refused before it reaches a query, as a 422 ``invalid-request`` problem
like any other value that does not match the route's schema.

The types below carry their bounds as :mod:`annotated_types` constraints, so
one annotation works in a path or query parameter (FastAPI reads the
constraint from the ``Annotated`` metadata) and in a pydantic request model,
and the bounds show in the OpenAPI document (``minimum``/``maximum``)::

    def get_release(release_id: DbId, ...): ...

    class BatchIn(BaseModel):
        factory_id: DbId
        range_start: Counter | None = None

A route that wants a description or a tighter bound keeps using
``Annotated[int, Path(ge=..., le=...)]`` with a bound at most
:data:`MAX_REQUEST_INT`. As a safety net only, ``fleetward.api.problems``
answers a driver's overflow that slips past a missing annotation with a 400
``invalid-input`` problem.
"""

from __future__ import annotations

from typing import Annotated

import annotated_types

__all__ = ["DB_INT_MAX", "MAX_REQUEST_INT", "Counter", "DbId", "Version"]

DB_INT_MAX = 2**63 - 1
"""The largest value a 64-bit signed database column holds (both drivers
refuse a larger one as a bound parameter)."""

MAX_REQUEST_INT = 2**53 - 1
"""The largest integer a request may carry: below :data:`DB_INT_MAX`, and the
largest every JSON client holds exactly (JavaScript's
``Number.MAX_SAFE_INTEGER``). FastAPI writes a body field's bounds into the
OpenAPI document as floats, and ``2**63 - 1`` as a float is ``2**63``, one
past the column; ``2**53 - 1`` is exact. No id or counter comes near it."""

DbId = Annotated[int, annotated_types.Interval(ge=1, le=MAX_REQUEST_INT)]
"""A database row id (``id`` columns start at 1)."""

Version = Annotated[int, annotated_types.Interval(ge=0, le=MAX_REQUEST_INT)]
"""A version number (0 names a built-in default, such as the comms policy's)."""

Counter = Annotated[int, annotated_types.Interval(ge=0, le=MAX_REQUEST_INT)]
"""A non-negative count or number (range bounds, sample sizes, serial
numbers of a range) stored in a 64-bit column."""
