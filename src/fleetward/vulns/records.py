"""Value objects of vulnerability operations (pure).

What the parsers (:mod:`.sbom`, :mod:`.feeds`) produce and the matcher
(:mod:`.match`), the prioritiser (:mod:`.priority`) and the service consume.
Each validates itself in its constructor: ``ValueError`` for a bad value.

Two keys join components to advisories, both lowercase and normalised by
:func:`package_key` and :func:`cpe_key`:

- the **package key** ``<osv-ecosystem>:<name>`` (``pypi:requests``,
  ``npm:@scope/pkg``, ``maven:org.example:lib``, ``debian:openssl``), from a
  component's purl and from an OSV record's ``affected[].package``;
- the **CPE key** ``<vendor>:<product>`` (``openssl:openssl``,
  ``busybox:busybox``, ``linux:linux_kernel``), from a component's CPE 2.3
  name and from an NVD configuration's ``cpeMatch[].criteria``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

__all__ = [
    "ANALYSIS_STATES",
    "JUSTIFICATIONS",
    "SEVERITIES",
    "Advisory",
    "AffectedPackage",
    "Component",
    "CpeMatch",
    "EpssScore",
    "KevEntry",
    "OsvRange",
    "ParsedSbom",
    "SkippedRecord",
    "cpe_key",
    "cpe_parts",
    "package_key",
]

SEVERITIES = ("critical", "high", "medium", "low", "none", "unknown")
# CycloneDX 1.5 analysis states, spelled as fleetward's API spells them.
ANALYSIS_STATES = ("in_triage", "exploitable", "not_affected", "false_positive", "resolved")
# CycloneDX 1.5 impact-analysis justifications (required for not_affected).
JUSTIFICATIONS = (
    "code_not_present",
    "code_not_reachable",
    "requires_configuration",
    "requires_dependency",
    "requires_environment",
    "protected_by_compiler",
    "protected_at_runtime",
    "protected_at_perimeter",
    "protected_by_mitigating_control",
)


def package_key(ecosystem: str, name: str) -> str:
    """``<ecosystem>:<name>``, lowercase: how components meet OSV packages.

    PyPI names are also normalised as PEP 503 says (runs of ``-_.`` are one
    ``-``), since OSV and SBOM tools spell them either way.
    """
    eco = ecosystem.strip().lower()
    n = name.strip().lower()
    if eco == "pypi":
        n = re.sub(r"[-_.]+", "-", n)
    if not eco or not n:
        raise ValueError("a package key needs an ecosystem and a name")
    return f"{eco}:{n}"


def cpe_key(vendor: str, product: str) -> str:
    """``<vendor>:<product>``, lowercase: how components meet NVD CPE matches."""
    v, p = vendor.strip().lower(), product.strip().lower()
    if not v or not p or v in ("*", "-") or p in ("*", "-"):
        raise ValueError("a CPE key needs a vendor and a product")
    return f"{v}:{p}"


@dataclass(frozen=True)
class Component:
    """One component of a release's SBOM, as matching needs it.

    ``ecosystem`` is the OSV ecosystem name (``PyPI``, ``npm``, ``Debian``,
    ``Alpine``, ``Maven``, ``Go``, ``crates.io``, ``Packagist``,
    ``RubyGems``, ``NuGet``, ``Hex``, ``Pub``, ``OpenWrt`` ...) derived
    from the purl type, or None when the purl is missing or of a type OSV
    does not know (``generic``): such a component can still match by CPE.
    ``package`` is the name as that ecosystem spells it (npm
    ``@scope/name``, Maven ``group:artifact``, Go the module path).
    """

    name: str
    version: str | None = None
    purl: str | None = None  # canonical purl string (packageurl-python's to_string())
    cpe: str | None = None  # CPE 2.3 formatted string, as found
    ecosystem: str | None = None
    package: str | None = None
    bom_ref: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a component needs a name")
        if (self.ecosystem is None) != (self.package is None):
            raise ValueError("ecosystem and package come together")

    @property
    def key(self) -> str | None:
        """The package key, or None without an ecosystem."""
        if self.ecosystem is None or self.package is None:
            return None
        return package_key(self.ecosystem, self.package)

    @property
    def cpe_key(self) -> str | None:
        """The CPE key (vendor:product), or None without a parseable CPE."""
        if not self.cpe:
            return None
        parts = cpe_parts(self.cpe)
        if parts is None:
            return None
        try:
            return cpe_key(parts[3], parts[4])
        except ValueError:
            return None

    @property
    def cpe_version(self) -> str | None:
        """The CPE's version field when it names one (not ``*`` or ``-``)."""
        if not self.cpe:
            return None
        parts = cpe_parts(self.cpe)
        if parts is None or parts[5] in ("*", "-", ""):
            return None
        return parts[5].replace("\\", "")


def cpe_parts(cpe: str) -> list[str] | None:
    """Split a CPE 2.3 formatted string on unescaped colons (13 fields)."""
    parts: list[str] = []
    cur = []
    esc = False
    for ch in cpe:
        if esc:
            cur.append(ch)
            esc = False
        elif ch == "\\":
            cur.append(ch)
            esc = True
        elif ch == ":":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    if len(parts) != 13 or parts[0] != "cpe" or parts[1] != "2.3":
        return None
    return parts


@dataclass(frozen=True)
class ParsedSbom:
    """A parsed SBOM: its format, and the components fleetward keeps."""

    format: str  # "cyclonedx" | "spdx"
    spec_version: str  # "1.4" | "1.5" | "1.6" | "SPDX-2.3"
    components: tuple[Component, ...]
    skipped: tuple[str, ...] = ()  # one reason per component left out

    def __post_init__(self) -> None:
        if self.format not in ("cyclonedx", "spdx"):
            raise ValueError(f"unknown SBOM format {self.format!r}")


@dataclass(frozen=True)
class OsvRange:
    """One OSV ``affected[].ranges[]`` entry: its type and ordered events.

    ``events`` are (kind, version) pairs in file order, kind one of
    ``introduced``, ``fixed``, ``last_affected``, ``limit``.
    """

    type: str  # SEMVER | ECOSYSTEM | GIT
    events: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        if self.type not in ("SEMVER", "ECOSYSTEM", "GIT"):
            raise ValueError(f"unknown range type {self.type!r}")
        for kind, _ in self.events:
            if kind not in ("introduced", "fixed", "last_affected", "limit"):
                raise ValueError(f"unknown range event {kind!r}")


@dataclass(frozen=True)
class AffectedPackage:
    """An OSV ``affected[]`` entry: a package and where it is affected."""

    ecosystem: str  # as OSV spells it; "Debian:12" keeps its release suffix
    name: str
    ranges: tuple[OsvRange, ...] = ()
    versions: tuple[str, ...] = ()  # explicitly listed affected versions

    @property
    def key(self) -> str:
        """The package key, ecosystem without its ``:release`` suffix."""
        return package_key(self.ecosystem.split(":", 1)[0], self.name)


@dataclass(frozen=True)
class CpeMatch:
    """An NVD ``cpeMatch`` entry with ``vulnerable: true``.

    ``version`` is the CPE's own version field (``*`` for any, when the
    bounds below say which); the bounds are NVD's versionStart/End fields.
    """

    vendor: str
    product: str
    version: str = "*"
    start_including: str | None = None
    start_excluding: str | None = None
    end_including: str | None = None
    end_excluding: str | None = None

    @property
    def key(self) -> str:
        return cpe_key(self.vendor, self.product)


@dataclass(frozen=True)
class Advisory:
    """One advisory (an OSV record or an NVD CVE), normalised.

    ``modified`` orders versions of the same id: an import replaces a
    stored advisory only with a strictly newer one (or a different digest
    at the same time). ``withdrawn`` advisories are kept and match nothing.
    """

    id: str
    source: str  # "osv" | "nvd"
    modified: dt.datetime
    summary: str = ""
    aliases: tuple[str, ...] = ()
    published: dt.datetime | None = None
    withdrawn: dt.datetime | None = None
    severity: str = "unknown"  # one of SEVERITIES, from the best CVSS found
    cvss_score: float | None = None  # base score 0.0-10.0
    cvss_vector: str | None = None
    affected: tuple[AffectedPackage, ...] = ()
    cpes: tuple[CpeMatch, ...] = ()
    references: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.id or len(self.id) > 128:
            raise ValueError("an advisory id is 1-128 characters")
        if self.source not in ("osv", "nvd"):
            raise ValueError(f"unknown advisory source {self.source!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")
        if self.cvss_score is not None and not 0.0 <= self.cvss_score <= 10.0:
            raise ValueError("a CVSS base score is between 0 and 10")
        if self.modified.tzinfo is None:
            raise ValueError("modified must be timezone-aware")

    @property
    def cves(self) -> tuple[str, ...]:
        """Every CVE id this advisory is or aliases (KEV and EPSS join on these)."""
        ids = [self.id, *self.aliases]
        return tuple(sorted({i.upper() for i in ids if i.upper().startswith("CVE-")}))


@dataclass(frozen=True)
class KevEntry:
    """One entry of CISA's Known Exploited Vulnerabilities catalog."""

    cve: str
    vendor: str
    product: str
    name: str
    date_added: dt.date
    due_date: dt.date | None
    ransomware: bool = False
    required_action: str = ""

    def __post_init__(self) -> None:
        if not self.cve.upper().startswith("CVE-"):
            raise ValueError("a KEV entry names a CVE")


@dataclass(frozen=True)
class EpssScore:
    """FIRST EPSS: probability of exploitation in 30 days, and its percentile."""

    cve: str
    epss: float
    percentile: float
    score_date: dt.date | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.epss <= 1.0 or not 0.0 <= self.percentile <= 1.0:
            raise ValueError("EPSS and its percentile are between 0 and 1")


@dataclass(frozen=True)
class SkippedRecord:
    """Why one record of a feed or SBOM was skipped (the import report lists these)."""

    where: str  # file name and index or id, e.g. "all.zip:GHSA-xxxx.json"
    reason: str
