"""Matching components to advisories (pure).

Does a component (:class:`~fleetward.vulns.records.Component`) fall in an
advisory's affected ranges? Two sources answer, each by its own rules:

**OSV ``affected[]`` entries** (:func:`match_package`), evaluated exactly as
the OSV schema's *Evaluation* pseudocode says:

1. The component and the entry must share a package key
   (:func:`~fleetward.vulns.records.package_key`), else no match.
2. A version listed in ``versions[]`` matches: the same string, or, where the
   ecosystem has a known order, an equal version in that order
   (``v1.2.3`` equals ``1.2.3`` in Go).
3. Each ``SEMVER`` or ``ECOSYSTEM`` range is evaluated on its own; one that
   includes the version is a match. ``SEMVER`` ranges use SemVer 2.0
   precedence (a leading ``v`` and ``+build`` metadata are ignored);
   ``ECOSYSTEM`` ranges use the ecosystem's order (the ``:release`` suffix of
   ``Debian:12`` is dropped to find it), see ``_ECOSYSTEM_SCHEMES``.
4. Within a range: if it has ``limit`` events, the version must be below one
   of them (a limit containing ``*`` is infinity). The other events are
   sorted by version (``introduced: "0"`` first; equal versions keep their
   file order) and walked: ``introduced <= v`` sets *affected*,
   ``fixed <= v`` clears it, ``last_affected < v`` clears it. The state left
   after the walk is the answer.
5. ``GIT`` ranges cannot be evaluated by version and are skipped. An entry
   whose only ranges are ``GIT`` and that lists no ``versions[]`` raises
   :data:`UnevaluableError`: the caller counts it, it is never a silent "no".
6. A component version, or a range event, that the order cannot parse
   raises :data:`UnevaluableError` with the reason (again: counted, not
   treated as "not affected").

**NVD ``cpeMatch`` entries** (:func:`match_cpe`): vendor and product must
equal the component's CPE's; the component's version is its CPE's version
field, else its own version. A ``cpeMatch`` naming a version matches that
version only; one with ``*`` (or ``-``) matches within its
``versionStart/End{Including,Excluding}`` bounds, and with no bounds at all
matches every version (that is NVD's meaning, even when the component has
no version).

CPE versions and ecosystems without a known order use the *generic* order:
PEP 440 when every version in the comparison is a valid PEP 440 version
(numeric segments, ``1.0 == 1.0.0``, ``rc``/``beta`` before the release),
otherwise rpmvercmp (alphanumeric segments, so OpenSSL's ``1.1.1w`` sorts
after ``1.1.1a``). Both are univers classes; no comparison is written here.

Parsing a version is the hot cost, so a :class:`VersionCache` keeps
``(scheme, text) -> parsed version or "unparseable"``, bounded.
:class:`AdvisoryIndex` groups affected entries by package key and CPE
matches by CPE key, so :func:`match_components` evaluates each component
only against the entries that share a key; :func:`brute_force` is the
unindexed baseline (every component against every entry) with the same
decision functions, for the benchmark and a differential test.

``UnevaluableError`` is, for now, :class:`fleetward.errors.InvalidInputError`
(exception classes live in ``fleetward/errors.py`` only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from fleetward.errors import PayloadTooLargeError, UnevaluableVersionError
from fleetward.vulns._versions import (
    DEFAULT_CACHE_SIZE,
    GENERIC,
    MAX_VERSION_LENGTH,
    Ordered,
    VersionCache,
    parse_all,
    scheme_for,
)
from fleetward.vulns.records import Advisory, AffectedPackage, Component, CpeMatch, OsvRange

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "MAX_COMPONENTS",
    "MAX_EVENTS_PER_RANGE",
    "MAX_LISTED_VERSIONS",
    "MAX_UNEVALUABLE_SAMPLES",
    "MAX_VERSION_LENGTH",
    "AdvisoryIndex",
    "Match",
    "MatchReport",
    "UnevaluableError",
    "VersionCache",
    "brute_force",
    "match_components",
    "match_cpe",
    "match_package",
]

# A component or advisory whose version decision cannot be made (unparseable
# version, GIT-only ranges). Callers catch it, count it and keep a sample.
UnevaluableError = UnevaluableVersionError

# Limits on untrusted input (SBOM components, feed records).
# Events in one OSV range; Linux kernel records carry a few hundred at most.
MAX_EVENTS_PER_RANGE: Final = 2_048
# Versions in one OSV versions[] list; OSV.dev fills these from git tags and
# kernel records reach several thousand.
MAX_LISTED_VERSIONS: Final = 50_000
# Components matched in one call (an SBOM, or a release's components).
MAX_COMPONENTS: Final = 200_000
# Unevaluable reasons kept as samples in a MatchReport (the rest are counted).
MAX_UNEVALUABLE_SAMPLES: Final = 20


@dataclass(frozen=True)
class Match:
    """One advisory that affects one component, and why.

    Attributes:
        advisory_id: The advisory's id.
        via: ``"package"`` (an OSV affected entry) or ``"cpe"`` (an NVD match).
        reason: For people, e.g. ``openssl 3.0.11 is in [3.0.0, 3.0.12)
            (NVD cpe openssl:openssl)``.
        fixed: The fixed versions the matching range names, for remediation.
    """

    advisory_id: str
    via: str
    reason: str
    fixed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.via not in ("package", "cpe"):
            raise ValueError(f"unknown match kind {self.via!r}")


@dataclass(frozen=True)
class MatchReport:
    """What matching a list of components found.

    Attributes:
        matches: Component index -> its matches, one per advisory (a package
            match is kept over a CPE match), sorted by advisory id.
            Components without a match are absent.
        unevaluable: (component, entry) pairs that could not be decided.
        samples: Up to ``MAX_UNEVALUABLE_SAMPLES`` of their reasons.
        decisions: Decision-function calls made (a cost measure).
    """

    matches: Mapping[int, tuple[Match, ...]]
    unevaluable: int = 0
    samples: tuple[str, ...] = ()
    decisions: int = 0


def _label(component: Component) -> str:
    return component.package or component.name


def _check_version(version: str | None, label: str) -> str:
    if not version:
        raise UnevaluableError(f"{label} has no version")
    if len(version) > MAX_VERSION_LENGTH:
        raise UnevaluableError(f"the version of {label} is too long")
    return version


def match_package(
    component: Component, advisory_id: str, affected: AffectedPackage, *, cache: VersionCache
) -> Match | None:
    """Whether an OSV affected entry covers this component (rules 1-6 above).

    Args:
        component: The component, with its ecosystem, package and version.
        advisory_id: The advisory the entry belongs to (for the result).
        affected: The OSV ``affected[]`` entry.
        cache: Parsed versions, shared across calls.

    Returns:
        A :class:`Match` with ``via="package"``, or None when not affected
        (or the package keys differ).

    Raises:
        UnevaluableError: The version or a range cannot be evaluated.
    """
    key = component.key
    try:
        if key is None or key != affected.key:
            return None
    except ValueError:  # an entry without a usable ecosystem or name
        return None
    return _match_package(component, advisory_id, affected, cache)


def _match_package(
    component: Component, advisory_id: str, affected: AffectedPackage, cache: VersionCache
) -> Match | None:
    # Reasons are built without context; it is added only when one is raised.
    try:
        return _decide_package(component, advisory_id, affected, cache)
    except UnevaluableError as exc:
        raise UnevaluableError(f"{advisory_id} {affected.ecosystem}: {exc.detail}") from None


def _decide_package(
    component: Component, advisory_id: str, affected: AffectedPackage, cache: VersionCache
) -> Match | None:
    label = _label(component)
    version = _check_version(component.version, label)
    if affected.versions and _listed(version, affected, cache):
        fixed = tuple(v for r in affected.ranges for k, v in r.events if k == "fixed")
        reason = f"{label} {version} is listed as affected ({affected.ecosystem} {advisory_id})"
        return Match(advisory_id, "package", reason, tuple(dict.fromkeys(fixed)))
    for rng in affected.ranges:
        if rng.type == "GIT":
            continue
        hit = _in_range(version, rng, scheme_for(rng.type, affected.ecosystem), cache)
        if hit is not None:
            interval, fixed = hit
            reason = f"{label} {version} is in {interval} ({affected.ecosystem} {rng.type} range)"
            return Match(advisory_id, "package", reason, fixed)
    only_git = bool(affected.ranges) and all(r.type == "GIT" for r in affected.ranges)
    if only_git and not affected.versions:
        raise UnevaluableError("only GIT ranges, which a version cannot be placed in")
    return None


def _listed(version: str, affected: AffectedPackage, cache: VersionCache) -> bool:
    """OSV IncludedInVersions: the same string, or an equal version in the ecosystem's order."""
    listed = affected.versions
    if len(listed) > MAX_LISTED_VERSIONS:
        raise UnevaluableError(f"more than {MAX_LISTED_VERSIONS} listed versions")
    if version in listed:
        return True
    scheme = scheme_for("ECOSYSTEM", affected.ecosystem)
    if scheme == GENERIC:
        return False  # no known order: only the exact string says "equal"
    mine = cache.parse(scheme, version)
    if mine is None:
        return False
    for text in listed:
        other = cache.parse(scheme, text)
        if other is not None and not (other < mine or mine < other):
            return True
    return False


def _in_range(
    version: str, rng: OsvRange, scheme: str, cache: VersionCache
) -> tuple[str, tuple[str, ...]] | None:
    """OSV IncludedInRanges for one range: (interval text, fixed versions) or None."""
    events = rng.events
    if len(events) > MAX_EVENTS_PER_RANGE:
        raise UnevaluableError(f"more than {MAX_EVENTS_PER_RANGE} events in a range")
    # Events whose value is special ("0" introduced, "*" limit) are not parsed.
    special = [
        (kind == "introduced" and text == "0") or (kind == "limit" and "*" in text)
        for kind, text in events
    ]
    texts = [version, *(t for (_, t), s in zip(events, special, strict=True) if not s)]
    parsed = iter(parse_all(scheme, texts, cache))
    v = next(parsed)
    limits: list[Ordered | None] = []
    zeros: list[tuple[str, str, Ordered | None]] = []
    ordered: list[tuple[str, str, Ordered]] = []
    for (kind, text), is_special in zip(events, special, strict=True):
        p = None if is_special else next(parsed)
        if kind == "limit":
            limits.append(p)
        elif p is None:
            zeros.append((kind, text, None))
        else:
            ordered.append((kind, text, p))
    try:
        if limits and not any(lim is None or v < lim for lim in limits):
            return None
        # sorted() is stable: equal versions keep their file order.
        walk = zeros + sorted(ordered, key=lambda e: e[2])
        affected_at: int | None = None
        for i, (kind, _, p) in enumerate(walk):
            if kind == "introduced" and (p is None or not v < p):  # v >= introduced
                affected_at = i
            elif (kind == "fixed" and p is not None and not v < p) or (  # v >= fixed
                kind == "last_affected" and p is not None and p < v  # v > last_affected
            ):
                affected_at = None
    except (TypeError, ValueError) as exc:  # an order that cannot compare these two
        raise UnevaluableError(f"versions cannot be compared ({exc})") from exc
    if affected_at is None:
        return None
    lower = walk[affected_at][1]
    upper = next(((k, t) for k, t, _ in walk[affected_at + 1 :] if k != "introduced"), None)
    if upper is None:
        interval = f"[{lower}, *)"
    elif upper[0] == "last_affected":
        interval = f"[{lower}, {upper[1]}]"
    else:
        interval = f"[{lower}, {upper[1]})"
    fixed = tuple(t for k, t, _ in walk if k == "fixed")
    return interval, fixed


def match_cpe(
    component: Component, advisory_id: str, cpe: CpeMatch, *, cache: VersionCache
) -> Match | None:
    """Whether an NVD cpeMatch covers this component.

    Args:
        component: The component; its CPE gives vendor, product and
            (when set) the version, else ``component.version`` is used.
        advisory_id: The advisory the match belongs to (for the result).
        cpe: The ``cpeMatch`` entry (``vulnerable: true``).
        cache: Parsed versions, shared across calls.

    Returns:
        A :class:`Match` with ``via="cpe"``, or None when not affected (or
        vendor/product differ).

    Raises:
        UnevaluableError: A version is needed and missing, or cannot be parsed.
    """
    key = component.cpe_key
    try:
        if key is None or key != cpe.key:
            return None
    except ValueError:  # a match without a usable vendor or product
        return None
    version = component.cpe_version or component.version
    return _match_cpe(_label(component), version, key, advisory_id, cpe, cache)


def _match_cpe(
    label: str, version: str | None, key: str, advisory_id: str, cpe: CpeMatch, cache: VersionCache
) -> Match | None:
    try:
        return _decide_cpe(label, version, key, advisory_id, cpe, cache)
    except UnevaluableError as exc:
        raise UnevaluableError(f"{advisory_id} cpe {key}: {exc.detail}") from None


def _decide_cpe(
    label: str, version: str | None, key: str, advisory_id: str, cpe: CpeMatch, cache: VersionCache
) -> Match | None:
    where = f"(NVD cpe {key})"
    wanted = cpe.version.replace("\\", "")
    bounds = [
        (">=", cpe.start_including),
        (">", cpe.start_excluding),
        ("<=", cpe.end_including),
        ("<", cpe.end_excluding),
    ]
    present = [(op, b.replace("\\", "")) for op, b in bounds if b]
    if wanted in ("*", "-", "") and not present:
        shown = version or "(no version)"
        return Match(advisory_id, "cpe", f"{label} {shown} is in every version {where}")
    version = _check_version(version, label)
    try:
        if wanted not in ("*", "-", ""):
            if version.lower() != wanted.lower():
                mine, theirs = parse_all(GENERIC, [version, wanted], cache)
                if mine < theirs or theirs < mine:
                    return None
            return Match(advisory_id, "cpe", f"{label} {version} is {wanted} {where}")
        v, *limits = parse_all(GENERIC, [version, *(b for _, b in present)], cache)
        for (op, _), lim in zip(present, limits, strict=True):
            if op == ">=":
                outside = v < lim
            elif op == ">":
                outside = not lim < v
            elif op == "<=":
                outside = lim < v
            else:
                outside = not v < lim
            if outside:
                return None
    except (TypeError, ValueError) as exc:  # an order that cannot compare these two
        raise UnevaluableError(f"versions cannot be compared ({exc})") from exc
    low = cpe.start_including or cpe.start_excluding
    high = cpe.end_including or cpe.end_excluding
    interval = (
        ("[" if cpe.start_including else "(")
        + f"{low or '*'}, {high or '*'}"
        + ("]" if cpe.end_including else ")")
    )
    fixed = (cpe.end_excluding,) if cpe.end_excluding else ()
    return Match(advisory_id, "cpe", f"{label} {version} is in {interval} {where}", fixed)


class AdvisoryIndex:
    """Affected entries by package key and CPE matches by CPE key.

    Entries whose key cannot be formed (an empty name, a ``*`` vendor) are
    skipped and counted in :attr:`skipped`.
    """

    def __init__(
        self,
        packages: Iterable[tuple[str, AffectedPackage]] = (),
        cpes: Iterable[tuple[str, CpeMatch]] = (),
    ) -> None:
        """Index raw (advisory id, entry) pairs, as the service stores them.

        Args:
            packages: (advisory id, OSV affected entry) pairs.
            cpes: (advisory id, NVD cpeMatch) pairs.
        """
        self._packages: dict[str, list[tuple[str, AffectedPackage]]] = {}
        self._cpes: dict[str, list[tuple[str, CpeMatch]]] = {}
        self.skipped = 0
        for advisory_id, affected in packages:
            self._add_package(advisory_id, affected)
        for advisory_id, cpe in cpes:
            self._add_cpe(advisory_id, cpe)

    @classmethod
    def from_advisories(cls, advisories: Iterable[Advisory]) -> AdvisoryIndex:
        """Index advisories' affected entries and CPE matches; withdrawn ones are left out.

        Args:
            advisories: Normalised advisories (OSV or NVD).

        Returns:
            The index.
        """
        index = cls()
        for adv in advisories:
            if adv.withdrawn is not None:
                continue
            for affected in adv.affected:
                index._add_package(adv.id, affected)
            for cpe in adv.cpes:
                index._add_cpe(adv.id, cpe)
        return index

    def _add_package(self, advisory_id: str, affected: AffectedPackage) -> None:
        try:
            key = affected.key
        except ValueError:
            self.skipped += 1
            return
        self._packages.setdefault(key, []).append((advisory_id, affected))

    def _add_cpe(self, advisory_id: str, cpe: CpeMatch) -> None:
        try:
            key = cpe.key
        except ValueError:
            self.skipped += 1
            return
        self._cpes.setdefault(key, []).append((advisory_id, cpe))

    def candidates(
        self, component: Component
    ) -> tuple[Sequence[tuple[str, AffectedPackage]], Sequence[tuple[str, CpeMatch]]]:
        """The entries sharing the component's package key, and its CPE key.

        Args:
            component: The component.

        Returns:
            (package candidates, CPE candidates), each in insertion order.
        """
        key, ckey = component.key, component.cpe_key
        packages = self._packages.get(key, ()) if key is not None else ()
        cpes = self._cpes.get(ckey, ()) if ckey is not None else ()
        return packages, cpes


class _Collector:
    """Accumulates matches (one per advisory, package over CPE) and unevaluables."""

    def __init__(self) -> None:
        self.found: dict[int, dict[str, Match]] = {}
        self.unevaluable = 0
        self.samples: list[str] = []
        self.decisions = 0

    def run(
        self, index: int, component: Component, decide: Callable[..., Match | None], *args: Any
    ) -> None:
        """Call one decision function; keep its match, or count why it could not decide."""
        self.decisions += 1
        try:
            match = decide(*args)
        except UnevaluableError as exc:
            self.unevaluable += 1
            if len(self.samples) < MAX_UNEVALUABLE_SAMPLES:
                self.samples.append(f"{_label(component)} {component.version or ''}: {exc.detail}")
            return
        if match is None:
            return
        mine = self.found.setdefault(index, {})
        old = mine.get(match.advisory_id)
        if old is None or (old.via == "cpe" and match.via == "package"):
            mine[match.advisory_id] = match

    def report(self) -> MatchReport:
        matches = {i: tuple(m[k] for k in sorted(m)) for i, m in sorted(self.found.items()) if m}
        return MatchReport(matches, self.unevaluable, tuple(self.samples), self.decisions)


def _check_count(components: Sequence[Component]) -> None:
    if len(components) > MAX_COMPONENTS:
        raise PayloadTooLargeError(f"at most {MAX_COMPONENTS} components are matched at once")


def match_components(
    components: Sequence[Component], index: AdvisoryIndex, *, cache: VersionCache
) -> MatchReport:
    """Match every component against the index's candidates for it.

    Args:
        components: The components (their position is their id in the report).
        index: The advisory index.
        cache: Parsed versions, shared across calls.

    Returns:
        The report: matches per component, unevaluable count and samples.

    Raises:
        PayloadTooLargeError: More than ``MAX_COMPONENTS`` components.
    """
    _check_count(components)
    out = _Collector()
    for i, component in enumerate(components):
        packages, cpes = index.candidates(component)
        for advisory_id, affected in packages:
            out.run(i, component, _match_package, component, advisory_id, affected, cache)
        if not cpes:
            continue
        ckey, label = component.cpe_key or "", _label(component)
        version = component.cpe_version or component.version
        for advisory_id, cpe in cpes:
            out.run(i, component, _match_cpe, label, version, ckey, advisory_id, cpe, cache)
    return out.report()


def brute_force(
    components: Sequence[Component],
    advisories: Sequence[Advisory],
    *,
    cache: VersionCache | None = None,
) -> MatchReport:
    """The unindexed baseline: every component against every entry of every advisory.

    Uses :func:`match_package` and :func:`match_cpe` (which compare keys
    first); withdrawn advisories are skipped. Its matches and unevaluable
    count equal :func:`match_components`'s on the same input.

    Args:
        components: The components.
        advisories: The advisories.
        cache: Parsed versions (a fresh cache when None).

    Returns:
        The report.

    Raises:
        PayloadTooLargeError: More than ``MAX_COMPONENTS`` components.
    """
    _check_count(components)
    cache = cache if cache is not None else VersionCache()
    out = _Collector()
    by_package, by_cpe = partial(match_package, cache=cache), partial(match_cpe, cache=cache)
    for i, component in enumerate(components):
        for adv in advisories:
            if adv.withdrawn is not None:
                continue
            for affected in adv.affected:
                out.run(i, component, by_package, component, adv.id, affected)
            for cpe in adv.cpes:
                out.run(i, component, by_cpe, component, adv.id, cpe)
    return out.report()
