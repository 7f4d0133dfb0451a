"""Advisory feed parsers: OSV, NVD CVE API 2.0, CISA KEV, FIRST EPSS (pure).

Operators import files they downloaded (offline first); these functions
turn the bytes of those files into :mod:`.records` values. They read no
clock and open no socket; only :func:`iter_osv` touches the file system
(it reads the one path it is given, and never extracts a zip).

The rules, in order:

1. **A file either parses or is refused as a whole.** Input that is not
   the format at all (not JSON, not UTF-8, no EPSS header, not a zip) is an
   :class:`~fleetward.errors.InvalidInputError`; input over its named size
   limit is a :class:`~fleetward.errors.PayloadTooLargeError`. Nothing else
   escapes a whole-file parse.
2. **One bad record never spoils the rest.** Each record is parsed on its
   own; a record that does not parse becomes a
   :class:`~fleetward.vulns.records.SkippedRecord` whose ``where`` names the
   file and the record (index or id) and whose ``reason`` says what was
   wrong. Bad encodings, NaN and infinities, numbers too large, dates that
   do not parse and ids over 128 characters are all per-record problems.
   The lists returned keep the first :data:`MAX_REPORTED_ERRORS` errors and
   then one that counts the rest, so garbage cannot flood the import report.
3. **Structure is strict, ranking is best-effort.** A record whose identity
   or affected packages are malformed is refused, because matching on it
   would be wrong. A CVSS vector or severity label that does not parse is
   dropped (the advisory's severity falls back to the next source, then to
   ``unknown``), because refusing the record would hide the vulnerability.
4. **Large inputs stream.** An OSV ``all.zip`` (hundreds of thousands of
   records) is read one member at a time by :func:`iter_osv`; a directory
   one file at a time. NVD, KEV and EPSS files are bounded by their limits
   and parsed from bytes.

Timestamps without a zone (NVD writes ``2023-11-06T16:15:42.670``) are
UTC, as NVD documents; every datetime returned is UTC-aware.

Layout: this module is the face (detection, OSV, and the names below);
NVD, KEV and EPSS live in :mod:`._cvefeeds`, the shared loaders and field
readers in :mod:`._feedio`, the CVSS v3.1 formula in :mod:`._cvss`. Each
limit is defined beside the parser that enforces it and re-exported here.

Memory, measured: :func:`iter_osv` over a 200,000-record zip holds only
the zip's central directory (about 0.7 KB per member, ~130 MiB) and one
record at a time.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fleetward.errors import InvalidInputError, PayloadTooLargeError
from fleetward.vulns import _cvss
from fleetward.vulns._cvefeeds import (
    MAX_EPSS_BYTES,
    MAX_EPSS_LINE_CHARS,
    MAX_KEV_BYTES,
    MAX_NVD_BYTES,
    parse_epss,
    parse_kev,
    parse_nvd,
)
from fleetward.vulns._feedio import (
    GZIP_MAGIC,
    MAX_ID_CHARS,
    MAX_REPORTED_ERRORS,
    MAX_STRING_CHARS,
    MAX_SUMMARY_CHARS,
    as_score,
    as_text,
    as_timestamp,
    load_json,
    make_advisory,
)
from fleetward.vulns.records import Advisory, AffectedPackage, OsvRange, SkippedRecord

__all__ = [
    "MAX_COMPRESSION_RATIO",
    "MAX_EPSS_BYTES",
    "MAX_EPSS_LINE_CHARS",
    "MAX_HEAD_BYTES",
    "MAX_ID_CHARS",
    "MAX_KEV_BYTES",
    "MAX_NVD_BYTES",
    "MAX_RECORD_BYTES",
    "MAX_REPORTED_ERRORS",
    "MAX_STRING_CHARS",
    "MAX_UNCOMPRESSED_BYTES",
    "MAX_ZIP_MEMBERS",
    "detect_kind",
    "iter_osv",
    "parse_epss",
    "parse_kev",
    "parse_nvd",
    "parse_osv",
]

# --- Limits on untrusted input (OSV; the others live beside their parsers)

# One OSV record. The largest real ones (long `versions` lists) are a few
# hundred KiB; a record past this is refused on its own, not the whole feed.
MAX_RECORD_BYTES = 1024 * 1024
# Members of one OSV zip. osv.dev's all-ecosystems all.zip holds about
# 500,000 records today; this leaves room and stops a zip of empty members.
MAX_ZIP_MEMBERS = 1_000_000
# Sum of the members' uncompressed sizes in one zip, as its central
# directory declares them (zipfile never inflates past a declared size).
MAX_UNCOMPRESSED_BYTES = 8 * 1024**3
# Uncompressed/compressed size of one member. OSV JSON compresses 5-20x;
# a member that inflates more than this is a zip bomb and is refused.
MAX_COMPRESSION_RATIO = 200
# How much of a file detect_kind looks at.
MAX_HEAD_BYTES = 64 * 1024

_RANGE_TYPES = ("SEMVER", "ECOSYSTEM", "GIT")
_EVENT_KINDS = ("introduced", "fixed", "last_affected", "limit")
_GHSA_SEVERITY = {"critical": "critical", "high": "high", "moderate": "medium",
                  "medium": "medium", "low": "low"}  # fmt: skip
_ZIP_MAGIC = b"PK\x03\x04"


# --- Detection -----------------------------------------------------------

_NVD_FORMAT = re.compile(rb'"format"\s*:\s*"NVD_CVE"')
_NVD_CVE = re.compile(rb'"vulnerabilities"\s*:\s*\[\s*\{\s*"cve"\s*:')


def detect_kind(name: str, head: bytes) -> str:
    """Which feed a file is, from its name and first bytes.

    A directory is always OSV; the caller, which knows it is one, need not
    ask. gzip input is looked into (its first inflated bytes).

    Args:
        name: the file's name as uploaded or found (for messages, and an
            empty ``head`` of a ``.zip`` is OSV).
        head: the file's first bytes (at most :data:`MAX_HEAD_BYTES` are used).

    Returns:
        ``"osv"``, ``"nvd"``, ``"kev"`` or ``"epss"``.

    Raises:
        InvalidInputError: none of those.
    """
    head = head[:MAX_HEAD_BYTES]
    lower = name.lower()
    if head.startswith(_ZIP_MAGIC) or (not head and lower.endswith(".zip")):
        return "osv"
    if head.startswith(GZIP_MAGIC):
        try:
            head = zlib.decompressobj(wbits=31).decompress(head, MAX_HEAD_BYTES)
        except zlib.error as exc:
            raise InvalidInputError(f"{name}: not valid gzip") from exc
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if text.startswith((b"#model_version", b"cve,epss,percentile")):
        return "epss"
    if text.startswith(b"{"):
        if b'"catalogVersion"' in text or b'"cveID"' in text:
            return "kev"
        if _NVD_FORMAT.search(text) or _NVD_CVE.search(text):
            return "nvd"
        if b'"id"' in text and b'"modified"' in text:
            return "osv"
    raise InvalidInputError(f"{name}: not an OSV, NVD, KEV or EPSS file")


# --- OSV -----------------------------------------------------------------


def _osv_range(raw: Any, field: str) -> OsvRange:
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{field} is not an object")
    kind = raw.get("type")
    if kind not in _RANGE_TYPES:
        raise InvalidInputError(f"{field}.type {str(kind)[:40]!r} is not a known range type")
    events = raw.get("events")
    if not isinstance(events, list) or not events:
        raise InvalidInputError(f"{field}.events is not a non-empty list")
    out: list[tuple[str, str]] = []
    for j, event in enumerate(events):
        if not isinstance(event, dict) or len(event) != 1:
            raise InvalidInputError(f"{field}.events[{j}] is not an object with one event")
        ((event_kind, version),) = event.items()
        if event_kind not in _EVENT_KINDS:
            raise InvalidInputError(f"{field}.events[{j}] has unknown event {event_kind[:40]!r}")
        out.append((event_kind, as_text(version, f"{field}.events[{j}].{event_kind}")))
    return OsvRange(type=kind, events=tuple(out))


def _osv_affected(raw: Any, field: str) -> AffectedPackage | None:
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{field} is not an object")
    ranges_raw = raw.get("ranges", [])
    versions_raw = raw.get("versions", [])
    if not isinstance(ranges_raw, list):
        raise InvalidInputError(f"{field}.ranges is not a list")
    if not isinstance(versions_raw, list):
        raise InvalidInputError(f"{field}.versions is not a list")
    ranges = tuple(_osv_range(r, f"{field}.ranges[{i}]") for i, r in enumerate(ranges_raw))
    versions = tuple(as_text(v, f"{field}.versions[{i}]") for i, v in enumerate(versions_raw))
    package = raw.get("package")
    if package is None:
        # OSV lets a GIT-only entry (a C library known by its repository)
        # omit the package: there is nothing to match by package version,
        # so the entry is left out and the advisory kept.
        if ranges and not versions and all(r.type == "GIT" for r in ranges):
            return None
        raise InvalidInputError(f"{field} has no package")
    if not isinstance(package, dict):
        raise InvalidInputError(f"{field}.package is not an object")
    ecosystem = as_text(package.get("ecosystem"), f"{field}.package.ecosystem", MAX_ID_CHARS)
    name = as_text(package.get("name"), f"{field}.package.name")
    return AffectedPackage(ecosystem=ecosystem, name=name, ranges=ranges, versions=versions)


def _osv_severity(record: dict[str, Any]) -> tuple[str, float | None, str | None]:
    """(severity, score, vector): CVSS v3 vector, then database_specific."""
    vector: str | None = None
    score: float | None = None
    severities = record.get("severity") or []
    if not isinstance(severities, list):
        raise InvalidInputError("severity is not a list")
    for entry in severities:
        if not isinstance(entry, dict) or not isinstance(entry.get("score"), str):
            raise InvalidInputError("severity[] entry is not {type, score}")
        kind, value = entry.get("type"), entry["score"]
        if kind == "CVSS_V3" and score is None:
            try:
                score, vector = _cvss.base_score(value), value
            except ValueError:
                continue  # Rule 3: a bad vector costs the score, not the record.
        elif kind == "CVSS_V4" and vector is None:
            vector = value if len(value) <= _cvss.MAX_VECTOR_CHARS else None
    label: str | None = None
    specific = record.get("database_specific")
    if isinstance(specific, dict):
        if score is None and isinstance(specific.get("cvss"), dict):
            try:
                score = as_score(specific["cvss"].get("score"), "database_specific.cvss.score")
            except InvalidInputError:
                score = None
        raw_label = specific.get("severity")
        if isinstance(raw_label, str):
            label = _GHSA_SEVERITY.get(raw_label.strip().lower())
    if score is not None:
        return _cvss.severity_for_score(score), score, vector
    return label or "unknown", None, vector


def _osv_record(record: Any) -> Advisory:
    if not isinstance(record, dict):
        raise InvalidInputError("an OSV record is a JSON object")
    advisory_id = as_text(record.get("id"), "id", MAX_ID_CHARS)
    if "modified" not in record:
        raise InvalidInputError("modified is missing")
    modified = as_timestamp(record["modified"], "modified")
    published = record.get("published")
    withdrawn = record.get("withdrawn")
    aliases_raw = record.get("aliases") or []
    if not isinstance(aliases_raw, list):
        raise InvalidInputError("aliases is not a list")
    aliases = tuple(as_text(a, f"aliases[{i}]", MAX_ID_CHARS) for i, a in enumerate(aliases_raw))
    # The summary, else the first line of the details (Markdown, often long).
    summary = record.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        details = record.get("details")
        summary = details.strip().split("\n", 1)[0] if isinstance(details, str) else ""
    affected_raw = record.get("affected") or []
    if not isinstance(affected_raw, list):
        raise InvalidInputError("affected is not a list")
    affected = tuple(
        a
        for i, raw in enumerate(affected_raw)
        if (a := _osv_affected(raw, f"affected[{i}]")) is not None
    )
    references_raw = record.get("references") or []
    if not isinstance(references_raw, list):
        raise InvalidInputError("references is not a list")
    references = tuple(
        ref["url"]
        for ref in references_raw
        if isinstance(ref, dict)
        and isinstance(ref.get("url"), str)
        and len(ref["url"]) <= MAX_STRING_CHARS
    )
    severity, score, vector = _osv_severity(record)
    return make_advisory(
        id=advisory_id,
        source="osv",
        modified=modified,
        summary=summary.strip()[:MAX_SUMMARY_CHARS],
        aliases=aliases,
        published=None if published is None else as_timestamp(published, "published"),
        withdrawn=None if withdrawn is None else as_timestamp(withdrawn, "withdrawn"),
        severity=severity,
        cvss_score=score,
        cvss_vector=vector,
        affected=affected,
        references=references,
    )


def parse_osv(data: bytes, *, where: str) -> Advisory:
    """One OSV record (schema 1.x) as an :class:`Advisory`.

    Args:
        data: the record's JSON bytes.
        where: the record's location, for messages (``all.zip:GHSA-x.json``).

    Returns:
        The advisory: severity from a CVSS v3 vector's base score, else
        ``database_specific.cvss.score``, else ``database_specific.severity``
        (GHSA's labels), else ``unknown``; a CVSS v4 vector is kept unscored.

    Raises:
        PayloadTooLargeError: over :data:`MAX_RECORD_BYTES`.
        InvalidInputError: not JSON, or a missing/ill-typed id, modified,
            date, affected package, range type or event; the message says
            which field.
    """
    try:
        if len(data) > MAX_RECORD_BYTES:
            raise PayloadTooLargeError(f"over {MAX_RECORD_BYTES} bytes")
        return _osv_record(load_json(data, "the record"))
    except InvalidInputError as exc:
        raise type(exc)(f"{where}: {exc}") from exc


def _osv_item(data: bytes, where: str) -> Advisory | SkippedRecord:
    try:
        return parse_osv(data, where=where)
    except InvalidInputError as exc:
        return SkippedRecord(where=where, reason=str(exc).removeprefix(f"{where}: "))


def _read_bounded(path: Path) -> bytes:
    """At most MAX_RECORD_BYTES + 1 bytes of a regular file."""
    # A FIFO or device named *.json would block or never end: refuse it.
    if not stat.S_ISREG(path.stat().st_mode):
        raise OSError(errno.EINVAL, "not a regular file")
    with path.open("rb") as fh:
        return fh.read(MAX_RECORD_BYTES + 1)


def _iter_osv_zip(path: Path) -> Iterator[Advisory | SkippedRecord]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise InvalidInputError(f"{path.name} is not a readable zip: {exc}") from exc
    with archive:
        members = archive.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise PayloadTooLargeError(f"{path.name} has over {MAX_ZIP_MEMBERS} members")
        declared = sum(m.file_size for m in members)
        if declared > MAX_UNCOMPRESSED_BYTES:
            raise PayloadTooLargeError(
                f"{path.name} inflates to {declared} bytes, over {MAX_UNCOMPRESSED_BYTES}"
            )
        for member in members:
            if member.is_dir():
                continue
            where = f"{path.name}:{member.filename[:200]}"
            if not member.filename.endswith(".json"):
                yield SkippedRecord(where=where, reason="not a .json member, skipped")
                continue
            if member.file_size > MAX_RECORD_BYTES:
                yield SkippedRecord(where=where, reason=f"over {MAX_RECORD_BYTES} bytes")
                continue
            if member.file_size > MAX_COMPRESSION_RATIO * max(member.compress_size, 1):
                reason = f"compression ratio over {MAX_COMPRESSION_RATIO}: refused (zip bomb)"
                yield SkippedRecord(where=where, reason=reason)
                continue
            try:
                # zipfile stops at the declared size and checks the CRC, so
                # a lying header cannot make this read more than the limit.
                with archive.open(member) as fh:
                    data = fh.read(MAX_RECORD_BYTES + 1)
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, zlib.error) as exc:
                # RuntimeError: encrypted; NotImplementedError (a RuntimeError):
                # a compression method zipfile lacks.
                yield SkippedRecord(where=where, reason=f"unreadable member: {exc}")
                continue
            yield _osv_item(data, where)


def _iter_osv_dir(path: Path) -> Iterator[Advisory | SkippedRecord]:
    files: list[str] = []
    # Symbolic links to directories are not followed: an import reads the
    # tree it was given and nothing it points elsewhere.
    for root, dirs, names in os.walk(path, followlinks=False):
        dirs.sort()
        files.extend(os.path.join(root, n) for n in names if n.endswith(".json"))
    for file in sorted(files):
        where = os.path.relpath(file, path)
        try:
            data = _read_bounded(Path(file))
        except OSError as exc:
            yield SkippedRecord(where=where, reason=f"unreadable: {exc.strerror}")
            continue
        yield _osv_item(data, where)


def iter_osv(path: Path) -> Iterator[Advisory | SkippedRecord]:
    """Every OSV record in a file, a directory or an OSV ``all.zip``.

    Records are read and yielded one at a time, so memory stays flat
    however many the feed holds. A directory is walked recursively for
    ``*.json`` files in sorted order; a zip yields its members in archive
    order (a non-JSON member, an oversized one or one compressed past
    :data:`MAX_COMPRESSION_RATIO` is a :class:`SkippedRecord`).

    Args:
        path: a ``.json`` record, a directory, or a ``.zip``.

    Yields:
        An :class:`Advisory` or a :class:`SkippedRecord` per record.

    Raises:
        InvalidInputError: (on the first ``next``) the path is none of these
            or the zip is unreadable.
        PayloadTooLargeError: (on the first ``next``) the zip has over
            :data:`MAX_ZIP_MEMBERS` members or declares over
            :data:`MAX_UNCOMPRESSED_BYTES`.
    """
    if path.is_dir():
        yield from _iter_osv_dir(path)
    elif path.is_file() and path.suffix.lower() == ".zip":
        yield from _iter_osv_zip(path)
    elif path.is_file() and path.suffix.lower() == ".json":
        try:
            data = _read_bounded(path)
        except OSError as exc:
            raise InvalidInputError(f"{path.name} is unreadable: {exc.strerror}") from exc
        yield _osv_item(data, path.name)
    else:
        raise InvalidInputError(f"{path.name} is not an OSV .json, .zip or directory")
