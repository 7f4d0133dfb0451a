"""Shared pieces of the feed parsers (private to :mod:`.feeds`).

Strict JSON and gzip loading with size limits, typed field readers that
raise :class:`~fleetward.errors.InvalidInputError` with the field's name,
and the per-record loop that turns those into
:class:`~fleetward.vulns.records.SkippedRecord` values. Pure: bytes in,
values out.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import zlib
from collections.abc import Callable
from typing import Any

from fleetward.errors import InvalidInputError, PayloadTooLargeError
from fleetward.vulns.records import Advisory, SkippedRecord

__all__ = [
    "GZIP_MAGIC",
    "MAX_ID_CHARS",
    "MAX_REPORTED_ERRORS",
    "MAX_STRING_CHARS",
    "MAX_SUMMARY_CHARS",
    "ErrorList",
    "as_date",
    "as_score",
    "as_text",
    "as_timestamp",
    "get_typed",
    "gunzip",
    "load_json",
    "make_advisory",
    "parse_each",
    "top_list",
]

# Ids and aliases (records.Advisory allows 128).
MAX_ID_CHARS = 128
# Any other string kept (names, versions, URLs, CPEs).
MAX_STRING_CHARS = 2048
# A summary is cut to this (details can be many KiB of Markdown).
MAX_SUMMARY_CHARS = 1024
# Errors kept per parsed file before the rest are only counted, so that a
# file of garbage cannot flood the import report.
MAX_REPORTED_ERRORS = 1000

GZIP_MAGIC = b"\x1f\x8b"


class ErrorList:
    """Collects RecordErrors, keeping the first MAX_REPORTED_ERRORS."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.kept: list[SkippedRecord] = []
        self.dropped = 0

    def add(self, where: str, reason: str) -> None:
        if len(self.kept) < MAX_REPORTED_ERRORS:
            self.kept.append(SkippedRecord(where=where, reason=reason))
        else:
            self.dropped += 1

    def result(self) -> list[SkippedRecord]:
        if self.dropped:
            reason = f"{self.dropped} more bad records, not listed"
            return [*self.kept, SkippedRecord(where=self.where, reason=reason)]
        return self.kept


def _parse_int(text: str) -> int | float:
    # Python refuses to convert integers of more than 4,300 digits and
    # json.loads would then fail for the whole file; an absurd integer is
    # made infinite instead, so that the one record using it is refused.
    return int(text) if len(text) <= 20 else math.inf


def load_json(data: bytes, what: str) -> Any:
    """Strict UTF-8 JSON; NaN/Infinity parse (records refuse them later)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{what} is not UTF-8 (byte {exc.start})") from exc
    try:
        return json.loads(text, parse_int=_parse_int)
    except (ValueError, RecursionError) as exc:
        raise InvalidInputError(f"{what} is not JSON: {str(exc)[:120]}") from exc


def gunzip(data: bytes, limit: int, what: str) -> bytes:
    """``data`` as is, or inflated when it is gzip, refused past ``limit``."""
    if not data.startswith(GZIP_MAGIC):
        if len(data) > limit:
            raise PayloadTooLargeError(f"{what} is over {limit} bytes")
        return data
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise InvalidInputError(f"{what} is not valid gzip: {exc}") from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLargeError(f"{what} inflates to over {limit} bytes")
    if not inflater.eof:
        raise InvalidInputError(f"{what} is truncated gzip")
    return out


def get_typed(obj: dict[str, Any], key: str, kind: type, *, required: bool = False) -> Any:
    """``obj[key]`` checked to be ``kind``; None when absent and optional."""
    value = obj.get(key)
    if value is None:
        if required:
            raise InvalidInputError(f"{key} is missing")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidInputError(f"{key} is not a {kind.__name__}")
    if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
        raise InvalidInputError(f"{key} is over {MAX_STRING_CHARS} characters")
    if isinstance(value, str) and "\x00" in value:
        # PostgreSQL's text refuses NUL: one such record must not fail the import.
        raise InvalidInputError(f"{key} contains a NUL character")
    return value


def as_text(value: Any, field: str, limit: int = MAX_STRING_CHARS) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{field} is not a non-empty string")
    if len(value) > limit:
        raise InvalidInputError(f"{field} is over {limit} characters")
    if "\x00" in value:
        raise InvalidInputError(f"{field} contains a NUL character")
    return value


def as_timestamp(value: Any, field: str) -> dt.datetime:
    """RFC 3339 / ISO 8601 timestamp, UTC-aware (no zone means UTC)."""
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidInputError(f"{field} is not a timestamp string")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInputError(f"{field} {value[:40]!r} is not a timestamp") from exc
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=dt.UTC)
    try:
        return parsed.astimezone(dt.UTC)
    except OverflowError as exc:
        raise InvalidInputError(f"{field} {value!r} is out of range") from exc


def as_date(value: Any, field: str) -> dt.date:
    if not isinstance(value, str) or len(value) > 32:
        raise InvalidInputError(f"{field} is not a date string")
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInputError(f"{field} {value[:40]!r} is not a date") from exc


def as_score(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"{field} is not a number")
    score = float(value)
    if not math.isfinite(score) or not 0.0 <= score <= 10.0:
        raise InvalidInputError(f"{field} {value!r} is not a score between 0 and 10")
    return score


def make_advisory(**fields: Any) -> Advisory:
    try:
        return Advisory(**fields)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(str(exc)) from exc


def top_list(top: Any, key: str, what: str, where: str) -> list[Any]:
    if not isinstance(top, dict) or not isinstance(top.get(key), list):
        raise InvalidInputError(f"{where} is not a {what} file (no {key} list)")
    items: list[Any] = top[key]
    return items


def parse_each(
    items: list[Any], where: str, parse: Callable[[Any], Any], name: Callable[[Any], Any]
) -> tuple[list[Any], list[SkippedRecord]]:
    errors = ErrorList(where)
    parsed: list[Any] = []
    for i, item in enumerate(items):
        label = name(item)
        at = f"{where}:{label[:MAX_ID_CHARS]}" if isinstance(label, str) else f"{where}:[{i}]"
        try:
            parsed.append(parse(item))
        except InvalidInputError as exc:
            errors.add(at, str(exc))
    return parsed, errors.result()
