"""Tables of the vulns domain.

Advisories, KEV entries and EPSS scores are kept **per tenant**: feeds are
public data, but an import is an operator's act, and one tenant's file must
not be able to add, change or withdraw what another tenant's findings rest
on (a withdrawn advisory closes findings).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    Boolean,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from fleetward.store.db import Base
from fleetward.store.types import UTCDateTime

__all__ = [
    "Advisory",
    "AdvisoryAlias",
    "Affected",
    "Case",
    "CaseReport",
    "Epss",
    "FeedImport",
    "Finding",
    "Kev",
    "Review",
    "SbomComponent",
    "SbomIndex",
    "VulnPolicy",
]


class SbomIndex(Base):
    """A release's SBOM as indexed: format, digest, what was kept or refused."""

    __tablename__ = "vuln_sboms"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), unique=True)
    status: Mapped[str] = mapped_column(String(16))  # indexed | invalid | missing
    format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    spec_version: Mapped[str | None] = mapped_column(String(16), nullable=True)
    digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    components: Mapped[int] = mapped_column(Integer, default=0)
    problems: Mapped[str] = mapped_column(Text, default="[]")  # JSON reasons (capped)
    indexed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class SbomComponent(Base):
    """One component of a release, keyed for matching."""

    __tablename__ = "vuln_components"
    __table_args__ = (
        Index("ix_vuln_components_key", "tenant_id", "key"),
        Index("ix_vuln_components_cpe", "tenant_id", "cpe_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    purl: Mapped[str | None] = mapped_column(Text, nullable=True)
    cpe: Mapped[str | None] = mapped_column(Text, nullable=True)
    ecosystem: Mapped[str | None] = mapped_column(String(32), nullable=True)
    package: Mapped[str | None] = mapped_column(String(256), nullable=True)
    key: Mapped[str | None] = mapped_column(String(300), nullable=True)
    cpe_key: Mapped[str | None] = mapped_column(String(300), nullable=True)
    bom_ref: Mapped[str | None] = mapped_column(String(256), nullable=True)


class Advisory(Base):
    """One advisory (OSV record or NVD CVE) as last imported."""

    __tablename__ = "vuln_advisories"
    __table_args__ = (UniqueConstraint("tenant_id", "advisory_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    advisory_id: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(8))  # osv | nvd
    summary: Mapped[str] = mapped_column(Text, default="")
    aliases: Mapped[str] = mapped_column(Text, default="[]")  # JSON
    severity: Mapped[str] = mapped_column(String(16))
    cvss_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    cvss_vector: Mapped[str | None] = mapped_column(String(200), nullable=True)
    references: Mapped[str] = mapped_column(Text, default="[]")  # JSON urls (capped)
    published: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    modified: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    withdrawn: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    digest: Mapped[str] = mapped_column(String(64))  # of the normalised record
    import_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class AdvisoryAlias(Base):
    """A CVE id an advisory is or aliases: how KEV and EPSS join advisories."""

    __tablename__ = "vuln_advisory_cves"
    __table_args__ = (Index("ix_vuln_advisory_cves_cve", "tenant_id", "cve"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    advisory_pk: Mapped[int] = mapped_column(ForeignKey("vuln_advisories.id"), index=True)
    cve: Mapped[str] = mapped_column(String(64))


class Affected(Base):
    """One affected package (OSV) or vulnerable CPE match (NVD) of an advisory."""

    __tablename__ = "vuln_affected"
    __table_args__ = (Index("ix_vuln_affected_key", "tenant_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    advisory_pk: Mapped[int] = mapped_column(ForeignKey("vuln_advisories.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # package | cpe
    key: Mapped[str] = mapped_column(String(300))  # package key or CPE key
    spec: Mapped[str] = mapped_column(Text)  # JSON: ranges/versions or CPE bounds


class Kev(Base):
    """An entry of CISA's Known Exploited Vulnerabilities catalog."""

    __tablename__ = "vuln_kev"
    __table_args__ = (UniqueConstraint("tenant_id", "cve"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    cve: Mapped[str] = mapped_column(String(64))
    vendor: Mapped[str] = mapped_column(String(200))
    product: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(Text)
    date_added: Mapped[dt.date] = mapped_column(Date)
    due_date: Mapped[dt.date | None] = mapped_column(Date, nullable=True)
    ransomware: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    required_action: Mapped[str] = mapped_column(Text, default="")
    imported_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class Epss(Base):
    """A FIRST EPSS score of one CVE."""

    __tablename__ = "vuln_epss"
    __table_args__ = (UniqueConstraint("tenant_id", "cve"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    cve: Mapped[str] = mapped_column(String(64))
    epss: Mapped[float] = mapped_column(Float)
    percentile: Mapped[float] = mapped_column(Float)
    score_date: Mapped[dt.date | None] = mapped_column(Date, nullable=True)


class FeedImport(Base):
    """One import of a feed file: who, what, and the per-record report."""

    __tablename__ = "vuln_imports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # osv | nvd | kev | epss
    name: Mapped[str] = mapped_column(String(256))
    digest: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(200))
    total: Mapped[int] = mapped_column(Integer, default=0)
    added: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    unchanged: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    problems: Mapped[str] = mapped_column(Text, default="[]")  # JSON [{where, reason}] (capped)
    findings_new: Mapped[int] = mapped_column(Integer, default=0)
    findings_closed: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class Finding(Base):
    """An advisory matching a component of a release."""

    __tablename__ = "vuln_findings"
    __table_args__ = (
        UniqueConstraint("release_id", "component_pk", "advisory_pk"),
        Index("ix_vuln_findings_state", "tenant_id", "state", "rank"),
        Index("ix_vuln_findings_advisory", "advisory_pk"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"))
    component_pk: Mapped[int] = mapped_column(ForeignKey("vuln_components.id"))
    advisory_pk: Mapped[int] = mapped_column(ForeignKey("vuln_advisories.id"))
    advisory_id: Mapped[str] = mapped_column(String(128))
    # open | closed (close_reason: remediated | withdrawn | no-longer-affected)
    state: Mapped[str] = mapped_column(String(16))
    close_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    analysis: Mapped[str] = mapped_column(String(16), default="in_triage")
    justification: Mapped[str | None] = mapped_column(String(40), nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    exploited: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    via: Mapped[str] = mapped_column(String(8))  # package | cpe
    reason: Mapped[str] = mapped_column(Text)  # why it matched
    fixed_versions: Mapped[str] = mapped_column(Text, default="[]")  # JSON
    priority: Mapped[str] = mapped_column(String(2), default="P4")
    rank: Mapped[float] = mapped_column(Float, default=0.0)
    reasons: Mapped[str] = mapped_column(Text, default="[]")  # JSON sentences
    due_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    devices: Mapped[int] = mapped_column(Integer, default=0)  # running the release, last seen
    peak_devices: Mapped[int] = mapped_column(Integer, default=0)
    fix_release_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    campaign_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The alert raised for it (vulnerability-exploited | vulnerability-critical), once.
    alerted: Mapped[str | None] = mapped_column(String(32), nullable=True)
    first_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class VulnPolicy(Base):
    """A tenant's prioritisation policy (due days per level), as JSON."""

    __tablename__ = "vuln_policies"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    body: Mapped[str] = mapped_column(Text)
    updated_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class Review(Base):
    """A periodic vulnerability review, kept with its date."""

    __tablename__ = "vuln_reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    period_start: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(200))
    exposed: Mapped[int] = mapped_column(Integer, default=0)  # devices exposed at the time
    markdown: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)  # JSON


class Case(Base):
    """A CRA Article 14 reportable case: an actively exploited vulnerability."""

    __tablename__ = "vuln_cases"
    __table_args__ = (UniqueConstraint("tenant_id", "vulnerability"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    vulnerability: Mapped[str] = mapped_column(String(128))  # CVE id, else advisory id
    trigger: Mapped[str] = mapped_column(String(64))  # kev | operator | incident:<id>
    state: Mapped[str] = mapped_column(String(16))  # open | closed
    aware_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    fix_release_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    fix_available_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    alerted: Mapped[str] = mapped_column(Text, default="[]")  # JSON alert keys sent
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class CaseReport(Base):
    """A report of a case marked submitted, with the authority's reference."""

    __tablename__ = "vuln_case_reports"
    __table_args__ = (UniqueConstraint("case_id", "kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("vuln_cases.id"))
    kind: Mapped[str] = mapped_column(String(16))  # early-warning | notification | final
    reference: Mapped[str] = mapped_column(String(200))
    draft: Mapped[str] = mapped_column(Text)  # JSON of the draft as submitted
    submitted_by: Mapped[str] = mapped_column(String(200))
    submitted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
