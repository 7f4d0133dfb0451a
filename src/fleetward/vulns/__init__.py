"""Vulnerability operations: SBOMs, advisories, fleet exposure, priorities, VEX, the CRA clock.

See ``docs/vulns.md``. The public face: the use cases of :mod:`.service`
(findings, triage, policy), :mod:`.imports` (SBOM indexing, feed imports) and :mod:`.reporting` (CRA
cases, reviews, VEX), and the round :mod:`.runner` the runtime schedules.
The pure modules (:mod:`.sbom`, :mod:`.feeds`, :mod:`.match`,
:mod:`.priority`, :mod:`.cra`, :mod:`.review`, :mod:`.vex`,
:mod:`.records`) decide without I/O; the tables stay inside this package.
"""

from fleetward.vulns.imports import (
    FEED_KINDS,
    ImportReport,
    detect_kind,
    get_import,
    import_feed,
    index_pending,
    index_release,
    list_imports,
    rematch_all,
)
from fleetward.vulns.reporting import (
    CaseView,
    create_review,
    get_case,
    get_review,
    list_cases,
    list_reviews,
    open_case,
    recent_cases,
    release_vex,
    report_draft,
    submit_report,
)
from fleetward.vulns.service import (
    FindingView,
    counts,
    exposure,
    get_finding,
    get_policy,
    list_findings,
    release_blockers,
    set_policy,
    triage,
)

__all__ = [
    "FEED_KINDS",
    "CaseView",
    "FindingView",
    "ImportReport",
    "counts",
    "create_review",
    "detect_kind",
    "exposure",
    "get_case",
    "get_finding",
    "get_import",
    "get_policy",
    "get_review",
    "import_feed",
    "index_pending",
    "index_release",
    "list_cases",
    "list_findings",
    "list_imports",
    "list_reviews",
    "open_case",
    "recent_cases",
    "release_blockers",
    "release_vex",
    "rematch_all",
    "report_draft",
    "set_policy",
    "submit_report",
    "triage",
]
