"""Enrollment batches: which device ids a batch authorises, and whether it is usable.

Pure. A batch names its devices either as an explicit list or as a serial
range (``prefix`` + a zero-padded number of ``width`` digits in
``[start, end]``); it is open until it is closed, expires, or has enrolled
``max_count`` devices.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Any

from fleetward.errors import BatchUnusableError, InvalidInputError, OutsideBatchError
from fleetward.identity.profile import check_device_id

__all__ = [
    "MAX_BATCH_DEVICES",
    "MAX_EXPLICIT_IDS",
    "BatchRules",
    "OutsideBatchError",
    "check_member",
    "check_usable",
    "device_in_batch",
    "validate_range",
]

MAX_EXPLICIT_IDS = 100_000  # an explicit list is stored in the batch row
MAX_BATCH_DEVICES = 10_000_000  # devices a single batch may authorise
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,47}$")


@dataclass(frozen=True)
class BatchRules:
    """The parts of a batch row that decide an enrollment."""

    id: int
    factory_id: int
    environment: str
    product: str
    status: str
    expires_at: dt.datetime
    max_count: int
    used_count: int
    device_ids: frozenset[str] | None = None
    range_prefix: str | None = None
    range_start: int | None = None
    range_end: int | None = None
    range_width: int | None = None

    @classmethod
    def of(cls, row: Any) -> BatchRules:
        """From a batch row (``device_ids`` stored as JSON)."""
        return cls(
            id=row.id,
            factory_id=row.factory_id,
            environment=row.environment,
            product=row.product,
            status=row.status,
            expires_at=row.expires_at,
            max_count=row.max_count,
            used_count=row.used_count,
            device_ids=frozenset(json.loads(row.device_ids)) if row.device_ids else None,
            range_prefix=row.range_prefix,
            range_start=row.range_start,
            range_end=row.range_end,
            range_width=row.range_width,
        )


def validate_range(*, prefix: str, start: int, end: int, width: int) -> int:
    """Check a serial range and return how many ids it holds.

    Raises:
        InvalidInputError: bad prefix, width, or bounds.
    """
    if not _PREFIX.fullmatch(prefix):
        raise InvalidInputError("range prefix must be 1-48 of [A-Za-z0-9._-]")
    if not 1 <= width <= 16 or len(prefix) + width > 64:
        raise InvalidInputError("range width must be 1-16 digits, and prefix + width <= 64")
    if not 0 <= start <= end < 10**width:
        raise InvalidInputError(f"range bounds must satisfy 0 <= start <= end < 10^{width}")
    count = end - start + 1
    if count > MAX_BATCH_DEVICES:
        raise InvalidInputError(f"a batch may authorise at most {MAX_BATCH_DEVICES:,} devices")
    return count


def device_in_batch(rules: BatchRules, device_id: str) -> bool:
    """Whether the batch names ``device_id``."""
    if rules.device_ids is not None:
        return device_id in rules.device_ids
    prefix, width = rules.range_prefix, rules.range_width
    if prefix is None or width is None or rules.range_start is None or rules.range_end is None:
        return False
    if not device_id.startswith(prefix):
        return False
    digits = device_id[len(prefix) :]
    if len(digits) != width or not (digits.isascii() and digits.isdigit()):
        return False
    return rules.range_start <= int(digits) <= rules.range_end


def check_usable(rules: BatchRules, *, now: dt.datetime, adding: int = 1) -> None:
    """Raise unless the batch can enroll ``adding`` more devices now.

    Raises:
        BatchUnusableError: closed, expired, or exhausted.
    """
    if rules.status != "open":
        raise BatchUnusableError(f"batch {rules.id} is closed")
    if now >= rules.expires_at:
        raise BatchUnusableError(f"batch {rules.id} expired at {rules.expires_at.isoformat()}")
    if rules.used_count + adding > rules.max_count:
        raise BatchUnusableError(
            f"batch {rules.id} is exhausted ({rules.used_count} of {rules.max_count} used)"
        )


def check_member(rules: BatchRules, device_id: str) -> None:
    """Raise unless the batch names ``device_id``.

    Raises:
        InvalidInputError: malformed device id.
        OutsideBatchError: the batch does not authorise it.
    """
    check_device_id(device_id)
    if not device_in_batch(rules, device_id):
        raise OutsideBatchError(f"device {device_id!r} is not in batch {rules.id}")
