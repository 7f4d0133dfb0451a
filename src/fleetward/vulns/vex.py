"""CycloneDX VEX export of one release (pure).

A VEX (Vulnerability Exploitability eXchange) document says, per advisory
and component of a release, what the manufacturer concluded: ``in_triage``,
``exploitable``, ``not_affected`` (with a justification), ``false_positive``
or ``resolved``. It is built with cyclonedx-python-lib's model and written by
its JSON serialiser for CycloneDX 1.5 (or 1.6), so the output is what the
library and the schema agree on rather than hand-made JSON.

Shape: the BOM's ``metadata.component`` is the product release (type
``firmware``, bom-ref ``product``), ``components`` holds each component the
entries name (by its SBOM bom-ref, so a consumer can join this document to
the release's SBOM), the product depends on each of them (the library warns
about an incomplete dependency graph otherwise), and every entry becomes one
``vulnerabilities[]`` item whose ``affects`` names its component. One item
per (advisory, component) pair, because the analysis of one advisory can
differ between two components. Each item's bom-ref is derived from the pair
so the same input gives byte-identical output.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from cyclonedx.model import XsUri
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.impact_analysis import ImpactAnalysisJustification, ImpactAnalysisState
from cyclonedx.model.vulnerability import (
    BomTarget,
    Vulnerability,
    VulnerabilityAnalysis,
    VulnerabilityRating,
    VulnerabilityScoreSource,
    VulnerabilitySeverity,
    VulnerabilitySource,
)
from cyclonedx.output.json import JsonV1Dot5, JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from packageurl import PackageURL

from fleetward.errors import InvalidInputError, PayloadTooLargeError
from fleetward.vulns.records import ANALYSIS_STATES, JUSTIFICATIONS, SEVERITIES

__all__ = ["MAX_DETAIL", "MAX_ENTRIES", "PRODUCT_REF", "VexEntry", "vex_document"]

# A release's VEX lists its findings; more than this is not one release.
MAX_ENTRIES = 20_000
# Analysis detail is operator prose.
MAX_DETAIL = 8_000
# Names, versions, ids, urls, vectors.
MAX_SHORT = 2_048
PRODUCT_REF = "product"

_SCHEMAS = {SchemaVersion.V1_5: JsonV1Dot5, SchemaVersion.V1_6: JsonV1Dot6}


@dataclass(frozen=True)
class VexEntry:
    """The analysis of one advisory for one component of the release.

    ``component_ref`` is the component's bom-ref in the release's SBOM;
    when it is None one is derived from the purl (or name and version).
    ``cvss_score``, ``cvss_vector`` and ``severity`` make the entry's
    rating (none when all three are unset or severity is ``unknown`` and
    no score or vector is known).

    Raises:
        ValueError: an unknown state, severity or justification, a
            ``not_affected`` entry without a justification, a justification
            on another state, a bad purl or a naive datetime.
    """

    advisory_id: str
    source_name: str
    component_name: str
    state: str
    first_issued: dt.datetime
    last_updated: dt.datetime
    source_url: str | None = None
    component_ref: str | None = None
    component_purl: str | None = None
    component_version: str | None = None
    justification: str | None = None
    detail: str = ""
    cvss_score: float | None = None
    cvss_vector: str | None = None
    severity: str = "unknown"

    def __post_init__(self) -> None:
        if not self.advisory_id or not self.component_name or not self.source_name:
            raise ValueError("a VEX entry needs an advisory id, a source and a component name")
        if self.state not in ANALYSIS_STATES:
            raise ValueError(f"unknown analysis state {self.state!r}")
        if self.state == "not_affected" and self.justification is None:
            raise ValueError("a not_affected analysis needs a justification")
        if self.justification is not None:
            if self.justification not in JUSTIFICATIONS:
                raise ValueError(f"unknown justification {self.justification!r}")
            if self.state != "not_affected":
                raise ValueError("a justification belongs to a not_affected analysis")
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")
        if self.cvss_score is not None and not 0.0 <= self.cvss_score <= 10.0:
            raise ValueError("a CVSS base score is between 0 and 10")
        for name in ("first_issued", "last_updated"):
            value = getattr(self, name)
            if value.tzinfo is None or value.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware")
        if self.last_updated < self.first_issued:
            raise ValueError("last_updated precedes first_issued")
        if len(self.detail) > MAX_DETAIL:
            raise ValueError(f"analysis detail is at most {MAX_DETAIL} characters")
        shorts = (
            self.advisory_id,
            self.source_name,
            self.source_url,
            self.component_name,
            self.component_ref,
            self.component_purl,
            self.component_version,
            self.cvss_vector,
        )
        if any(s is not None and len(s) > MAX_SHORT for s in shorts):
            raise ValueError(f"ids, names, urls and vectors are at most {MAX_SHORT} characters")
        if self.component_purl is not None:
            PackageURL.from_string(self.component_purl)  # raises ValueError when malformed

    @property
    def ref(self) -> str:
        """The component's bom-ref: as given, else the purl, else ``name@version``."""
        if self.component_ref:
            return self.component_ref
        if self.component_purl:
            return PackageURL.from_string(self.component_purl).to_string()
        return f"{self.component_name}@{self.component_version or ''}"


def _rating(entry: VexEntry) -> VulnerabilityRating | None:
    if entry.cvss_score is None and entry.cvss_vector is None and entry.severity == "unknown":
        return None
    # The library names the method from the vector's prefix (OTHER when it has none).
    method = (
        VulnerabilityScoreSource.get_from_vector(entry.cvss_vector) if entry.cvss_vector else None
    )
    return VulnerabilityRating(
        score=None if entry.cvss_score is None else Decimal(f"{entry.cvss_score:.1f}"),
        severity=VulnerabilitySeverity(entry.severity),
        method=method,
        vector=entry.cvss_vector,
    )


def _vulnerability(entry: VexEntry) -> Vulnerability:
    rating = _rating(entry)
    analysis = VulnerabilityAnalysis(
        state=ImpactAnalysisState(entry.state),
        justification=None
        if entry.justification is None
        else ImpactAnalysisJustification(entry.justification),
        detail=entry.detail or None,
        first_issued=entry.first_issued.astimezone(dt.UTC),
        last_updated=entry.last_updated.astimezone(dt.UTC),
    )
    return Vulnerability(
        bom_ref=f"vex:{entry.advisory_id}:{entry.ref}",
        id=entry.advisory_id,
        source=VulnerabilitySource(
            name=entry.source_name,
            url=None if entry.source_url is None else XsUri(entry.source_url),
        ),
        ratings=[] if rating is None else [rating],
        analysis=analysis,
        affects=[BomTarget(ref=entry.ref)],
    )


def vex_document(
    *,
    product: str,
    version: str,
    entries: Sequence[VexEntry],
    now: dt.datetime,
    serial: uuid.UUID,
    schema: SchemaVersion = SchemaVersion.V1_5,
) -> bytes:
    """The CycloneDX VEX JSON document of one release.

    Args:
        product: the product's name.
        version: the release's version.
        entries: one analysis per (advisory, component).
        now: the document's timestamp.
        serial: the BOM serial number (``urn:uuid:<serial>``); a new one per
            document, chosen by the caller so the function stays pure.
        schema: CycloneDX 1.5 (default) or 1.6.

    Returns:
        UTF-8 JSON.

    Raises:
        InvalidInputError: an empty product or version, the same (advisory,
            component) twice, one bom-ref naming two different components,
            an unsupported schema, or a naive ``now``.
        PayloadTooLargeError: more than :data:`MAX_ENTRIES` entries.
    """
    if not product or not version or len(product) > MAX_SHORT or len(version) > MAX_SHORT:
        raise InvalidInputError(f"product and version are 1-{MAX_SHORT} characters")
    if len(entries) > MAX_ENTRIES:
        raise PayloadTooLargeError(f"a VEX document has at most {MAX_ENTRIES} entries")
    if schema not in _SCHEMAS:
        raise InvalidInputError("VEX documents are written as CycloneDX 1.5 or 1.6")
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidInputError("now must be timezone-aware")
    components: dict[str, Component] = {}
    seen: set[tuple[str, str]] = set()
    for entry in entries:
        pair = (entry.advisory_id, entry.ref)
        if pair in seen:
            raise InvalidInputError(f"{entry.advisory_id} for {entry.ref} is listed twice")
        seen.add(pair)
        purl = (
            None if entry.component_purl is None else PackageURL.from_string(entry.component_purl)
        )
        component = Component(
            name=entry.component_name,
            version=entry.component_version,
            purl=purl,
            bom_ref=entry.ref,
        )
        known = components.setdefault(entry.ref, component)
        if (known.name, known.version, known.purl) != (component.name, component.version, purl):
            raise InvalidInputError(f"bom-ref {entry.ref!r} names two different components")
    root = Component(
        name=product, version=version, type=ComponentType.FIRMWARE, bom_ref=PRODUCT_REF
    )
    if PRODUCT_REF in components:
        raise InvalidInputError(f"bom-ref {PRODUCT_REF!r} is reserved for the product")
    bom = Bom(
        serial_number=serial,
        metadata=BomMetaData(component=root, timestamp=now.astimezone(dt.UTC)),
        components=components.values(),
        vulnerabilities=[_vulnerability(e) for e in entries],
    )
    bom.register_dependency(root, components.values())
    for component in components.values():
        bom.register_dependency(component, [])
    text: str = _SCHEMAS[schema](bom).output_as_string(indent=2)
    return text.encode()
