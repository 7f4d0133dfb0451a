"""The CVE-keyed feeds: NVD CVE API 2.0, CISA KEV, FIRST EPSS (private).

Parsed from bytes (each file is bounded by its limit below); one
:class:`~fleetward.vulns.records.SkippedRecord` per record that does not
parse. :mod:`.feeds` is the public face and states the rules.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

from fleetward.errors import InvalidInputError
from fleetward.vulns import _cvss
from fleetward.vulns._feedio import (
    MAX_ID_CHARS,
    MAX_STRING_CHARS,
    MAX_SUMMARY_CHARS,
    ErrorList,
    as_date,
    as_score,
    as_text,
    as_timestamp,
    get_typed,
    gunzip,
    load_json,
    make_advisory,
    parse_each,
    top_list,
)
from fleetward.vulns.records import (
    SEVERITIES,
    Advisory,
    CpeMatch,
    EpssScore,
    KevEntry,
    SkippedRecord,
    cpe_parts,
)

__all__ = [
    "MAX_EPSS_BYTES",
    "MAX_EPSS_LINE_CHARS",
    "MAX_KEV_BYTES",
    "MAX_NVD_BYTES",
    "parse_epss",
    "parse_kev",
    "parse_nvd",
]

# One NVD file, after gunzip. An API 2.0 page (2,000 CVEs) is 5-15 MB and a
# yearly 2.0 feed about 100-300 MB; the whole file is parsed in memory.
MAX_NVD_BYTES = 512 * 1024 * 1024
# The KEV catalog is about 1.5 MB for ~1,400 entries.
MAX_KEV_BYTES = 32 * 1024 * 1024
# The EPSS CSV, after gunzip: about 10 MB for ~300,000 CVEs.
MAX_EPSS_BYTES = 128 * 1024 * 1024
# One EPSS row is `CVE-YYYY-NNNNNNN,0.12345,0.98765`: ~40 characters.
MAX_EPSS_LINE_CHARS = 256

# --- NVD -----------------------------------------------------------------

# cvssMetric lists in order of preference; within each, Primary first.
_NVD_METRICS = ("cvssMetricV31", "cvssMetricV30", "cvssMetricV40", "cvssMetricV2")


def _nvd_metric(metrics: Any) -> tuple[str, float | None, str | None]:
    if metrics is None:
        return "unknown", None, None
    if not isinstance(metrics, dict):
        raise InvalidInputError("metrics is not an object")
    for key in _NVD_METRICS:
        entries = metrics.get(key)
        if not entries:
            continue
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise InvalidInputError(f"metrics.{key} is not a list of objects")
        entry = sorted(entries, key=lambda e: e.get("type") != "Primary")[0]
        data = entry.get("cvssData")
        if not isinstance(data, dict):
            raise InvalidInputError(f"metrics.{key}[].cvssData is not an object")
        score = as_score(data.get("baseScore"), f"metrics.{key}[].cvssData.baseScore")
        vector = get_typed(data, "vectorString", str)
        # v2 keeps baseSeverity beside cvssData, v3/v4 inside it.
        label = data.get("baseSeverity") or entry.get("baseSeverity")
        severity = label.lower() if isinstance(label, str) else ""
        if severity not in SEVERITIES:
            severity = _cvss.severity_for_score(score)
        return severity, score, vector
    return "unknown", None, None


def _nvd_cpes(configurations: Any) -> tuple[CpeMatch, ...]:
    if configurations is None:
        return ()
    if not isinstance(configurations, list):
        raise InvalidInputError("configurations is not a list")
    out: list[CpeMatch] = []
    for c, config in enumerate(configurations):
        nodes = config.get("nodes") if isinstance(config, dict) else None
        if not isinstance(nodes, list):
            raise InvalidInputError(f"configurations[{c}].nodes is not a list")
        for n, node in enumerate(nodes):
            matches = node.get("cpeMatch") if isinstance(node, dict) else None
            field = f"configurations[{c}].nodes[{n}].cpeMatch"
            if not isinstance(matches, list):
                raise InvalidInputError(f"{field} is not a list")
            for m, match in enumerate(matches):
                if not isinstance(match, dict):
                    raise InvalidInputError(f"{field}[{m}] is not an object")
                if match.get("vulnerable") is not True:
                    continue
                out.append(_nvd_cpe(match, f"{field}[{m}]"))
    return tuple(out)


def _nvd_cpe(match: dict[str, Any], field: str) -> CpeMatch:
    criteria = as_text(match.get("criteria"), f"{field}.criteria")
    parts = cpe_parts(criteria)
    if parts is None:
        raise InvalidInputError(f"{field}.criteria {criteria[:80]!r} is not a CPE 2.3 name")
    vendor, product, version = parts[3], parts[4], parts[5]
    if vendor in ("", "*", "-") or product in ("", "*", "-"):
        raise InvalidInputError(f"{field}.criteria {criteria[:80]!r} names no vendor/product")
    bounds = {
        name: get_typed(match, key, str)
        for name, key in (
            ("start_including", "versionStartIncluding"),
            ("start_excluding", "versionStartExcluding"),
            ("end_including", "versionEndIncluding"),
            ("end_excluding", "versionEndExcluding"),
        )
    }
    # Vendor and product stay escaped, as Component.cpe_key reads them; the
    # version is unescaped, as Component.cpe_version returns it. CpeMatch has
    # no update field, so a named update joins the version (NVD's
    # `linux_kernel:6.2:rc1` is 6.2-rc1, not 6.2): dropping it would make the
    # final release match.
    version = version.replace("\\", "") or "*"
    update = parts[6].replace("\\", "")
    if version not in ("*", "-") and update not in ("", "*", "-"):
        version = f"{version}-{update}"
    return CpeMatch(vendor=vendor, product=product, version=version, **bounds)


def _nvd_cve(cve: Any) -> Advisory:
    if not isinstance(cve, dict):
        raise InvalidInputError("cve is not an object")
    advisory_id = as_text(cve.get("id"), "id", MAX_ID_CHARS)
    modified = as_timestamp(cve.get("lastModified"), "lastModified")
    published = cve.get("published")
    status = cve.get("vulnStatus")
    descriptions = cve.get("descriptions") or []
    if not isinstance(descriptions, list):
        raise InvalidInputError("descriptions is not a list")
    summary = next(
        (
            d["value"]
            for d in descriptions
            if isinstance(d, dict) and d.get("lang") == "en" and isinstance(d.get("value"), str)
        ),
        "",
    )
    severity, score, vector = _nvd_metric(cve.get("metrics"))
    references_raw = cve.get("references") or []
    if not isinstance(references_raw, list):
        raise InvalidInputError("references is not a list")
    references = tuple(
        r["url"]
        for r in references_raw
        if isinstance(r, dict)
        and isinstance(r.get("url"), str)
        and len(r["url"]) <= MAX_STRING_CHARS
    )
    return make_advisory(
        id=advisory_id,
        source="nvd",
        modified=modified,
        summary=summary[:MAX_SUMMARY_CHARS],
        published=None if published is None else as_timestamp(published, "published"),
        withdrawn=modified if status == "Rejected" else None,
        severity=severity,
        cvss_score=score,
        cvss_vector=vector,
        cpes=_nvd_cpes(cve.get("configurations")),
        references=references,
    )


def parse_nvd(data: bytes, *, where: str) -> tuple[list[Advisory], list[SkippedRecord]]:
    """NVD CVE API 2.0 JSON (an API page or a 2.0 feed file, gzip or not).

    Args:
        data: the file's bytes.
        where: the file's name, for messages.

    Returns:
        The advisories (source ``nvd``; ``Rejected`` ones withdrawn at their
        lastModified; the score from cvssMetricV31, V30, V40, then V2, the
        Primary entry first; CPE matches with ``vulnerable: true``) and one
        SkippedRecord per CVE that does not parse (``where`` ends in its id).

    Raises:
        PayloadTooLargeError: over :data:`MAX_NVD_BYTES` (inflated).
        InvalidInputError: not JSON, or no ``vulnerabilities`` list.
    """
    top = load_json(gunzip(data, MAX_NVD_BYTES, where), where)
    items = top_list(top, "vulnerabilities", "NVD CVE 2.0", where)

    def cve_id(item: Any) -> Any:
        cve = item.get("cve") if isinstance(item, dict) else None
        return cve.get("id") if isinstance(cve, dict) else None

    def parse(item: Any) -> Advisory:
        if not isinstance(item, dict):
            raise InvalidInputError("not an object with a cve")
        return _nvd_cve(item.get("cve"))

    return parse_each(items, where, parse, cve_id)


# --- KEV -----------------------------------------------------------------


def _kev_entry(raw: Any) -> KevEntry:
    if not isinstance(raw, dict):
        raise InvalidInputError("not an object")
    cve = as_text(raw.get("cveID"), "cveID", MAX_ID_CHARS)
    if not cve.upper().startswith("CVE-"):
        raise InvalidInputError(f"cveID {cve[:40]!r} is not a CVE id")
    due = raw.get("dueDate")
    ransomware = raw.get("knownRansomwareCampaignUse")
    if ransomware not in (None, "Known", "Unknown"):
        raise InvalidInputError(f"knownRansomwareCampaignUse {str(ransomware)[:20]!r} is unknown")
    return KevEntry(
        cve=cve,
        vendor=get_typed(raw, "vendorProject", str) or "",
        product=get_typed(raw, "product", str) or "",
        name=get_typed(raw, "vulnerabilityName", str) or "",
        date_added=as_date(raw.get("dateAdded"), "dateAdded"),
        due_date=None if due in (None, "") else as_date(due, "dueDate"),
        ransomware=ransomware == "Known",
        required_action=get_typed(raw, "requiredAction", str) or "",
    )


def parse_kev(data: bytes, *, where: str = "kev") -> tuple[list[KevEntry], list[SkippedRecord]]:
    """CISA's Known Exploited Vulnerabilities catalog (JSON).

    Args:
        data: the catalog's bytes (gzip accepted).
        where: the file's name, for messages.

    Returns:
        The entries, and one SkippedRecord per entry that does not parse
        (``where`` ends in its cveID, or its index without one).

    Raises:
        PayloadTooLargeError: over :data:`MAX_KEV_BYTES`.
        InvalidInputError: not JSON, or no ``vulnerabilities`` list.
    """
    top = load_json(gunzip(data, MAX_KEV_BYTES, where), where)
    items = top_list(top, "vulnerabilities", "KEV catalog", where)

    def cve_id(item: Any) -> Any:
        return item.get("cveID") if isinstance(item, dict) else None

    return parse_each(items, where, _kev_entry, cve_id)


# --- EPSS ----------------------------------------------------------------

_EPSS_HEADER = "cve,epss,percentile"
_SCORE_DATE = re.compile(r"score_date:([0-9T:+\-.Z]+)")


def _epss_row(line: str, score_date: dt.date | None) -> EpssScore:
    fields = line.split(",")
    if len(fields) != 3:
        raise InvalidInputError(f"{len(fields)} fields, not 3")
    cve = fields[0].strip()
    if not cve.upper().startswith("CVE-") or len(cve) > MAX_ID_CHARS:
        raise InvalidInputError(f"{cve[:40]!r} is not a CVE id")
    values: list[float] = []
    for label, text in (("epss", fields[1]), ("percentile", fields[2])):
        try:
            value = float(text)
        except ValueError as exc:
            raise InvalidInputError(f"{label} {text[:20]!r} is not a number") from exc
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise InvalidInputError(f"{label} {text[:20]!r} is not between 0 and 1")
        values.append(value)
    return EpssScore(cve=cve, epss=values[0], percentile=values[1], score_date=score_date)


def parse_epss(data: bytes, *, where: str = "epss") -> tuple[list[EpssScore], list[SkippedRecord]]:
    """FIRST's EPSS scores CSV (``epss_scores-YYYY-MM-DD.csv``, gzip or not).

    The optional first line ``#model_version:...,score_date:...`` gives the
    scores' date; the header ``cve,epss,percentile`` must come before any
    row.

    Args:
        data: the file's bytes.
        where: the file's name, for messages.

    Returns:
        The scores, and one SkippedRecord per bad row (``where`` ends in
        ``line N``).

    Raises:
        PayloadTooLargeError: over :data:`MAX_EPSS_BYTES` (inflated).
        InvalidInputError: no header.
    """
    lines = gunzip(data, MAX_EPSS_BYTES, where).splitlines()
    score_date: dt.date | None = None
    start = 0
    if lines and lines[0].startswith(b"#"):
        found = _SCORE_DATE.search(lines[0][:MAX_EPSS_LINE_CHARS].decode("ascii", "replace"))
        if found:
            try:
                score_date = as_timestamp(found.group(1), "score_date").date()
            except InvalidInputError:
                score_date = None  # The date is a label; the scores still hold.
        start = 1
    if len(lines) <= start or lines[start].strip().lower() != _EPSS_HEADER.encode():
        raise InvalidInputError(f"{where} is not an EPSS CSV (no {_EPSS_HEADER} header)")
    errors = ErrorList(where)
    scores: list[EpssScore] = []
    for number, raw in enumerate(lines[start + 1 :], start=start + 2):
        if not raw.strip():
            continue
        at = f"{where}:line {number}"
        try:
            if len(raw) > MAX_EPSS_LINE_CHARS:
                raise InvalidInputError(f"over {MAX_EPSS_LINE_CHARS} characters")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInputError("not UTF-8") from exc
            scores.append(_epss_row(line, score_date))
        except InvalidInputError as exc:
            errors.add(at, str(exc))
    return scores, errors.result()
