"""Matching components to advisories (pure): hand-written cases with expected answers."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetward.errors import PayloadTooLargeError
from fleetward.vulns import match as m
from fleetward.vulns.match import (
    AdvisoryIndex,
    Match,
    UnevaluableError,
    VersionCache,
    brute_force,
    match_components,
    match_cpe,
    match_package,
)
from fleetward.vulns.records import Advisory, AffectedPackage, Component, CpeMatch, OsvRange

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def comp(ecosystem: str, package: str, version: str | None) -> Component:
    return Component(name=package, version=version, ecosystem=ecosystem, package=package)


def cpe_comp(vendor: str, product: str, version: str | None, cpe_version: str = "*") -> Component:
    cpe = f"cpe:2.3:a:{vendor}:{product}:{cpe_version}:*:*:*:*:*:*:*"
    return Component(name=product, version=version, cpe=cpe)


def affected(
    ecosystem: str, name: str, *events: tuple[str, str], kind: str = "ECOSYSTEM"
) -> AffectedPackage:
    return AffectedPackage(ecosystem, name, (OsvRange(kind, tuple(events)),))


def decide(component: Component, entry: AffectedPackage) -> bool:
    return match_package(component, "ADV-1", entry, cache=VersionCache()) is not None


REQUESTS = affected("PyPI", "requests", ("introduced", "0"), ("fixed", "2.31.0"))


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("2.30.0", True),
        ("2.31.0", False),
        ("2.31.0rc1", True),  # PEP 440: a pre-release sorts before its final release
        ("2.31.0.post1", False),
        ("1.0.post1", True),
        ("0.0.1", True),
        ("v2.30", True),  # PEP 440 allows a leading v, and 2.30 == 2.30.0
        ("2.31", False),  # 2.31 == 2.31.0
        ("3.0.0.dev1", False),
    ],
)
def test_pypi_ecosystem_range(version: str, expected: bool) -> None:
    assert decide(comp("PyPI", "requests", version), REQUESTS) is expected


def test_pypi_match_carries_reason_and_fixed_versions() -> None:
    found = match_package(
        comp("PyPI", "Requests", "2.30.0"), "PYSEC-1", REQUESTS, cache=VersionCache()
    )
    assert found == Match(
        "PYSEC-1",
        "package",
        "Requests 2.30.0 is in [0, 2.31.0) (PyPI ECOSYSTEM range)",
        ("2.31.0",),
    )


def test_package_keys_must_agree_with_pep503_names_folded() -> None:
    entry = affected("PyPI", "requests-toolbelt", ("introduced", "0"))
    assert decide(comp("PyPI", "Requests_Toolbelt", "1.0"), entry)
    assert not decide(comp("PyPI", "requests", "1.0"), entry)
    assert not decide(comp("npm", "requests-toolbelt", "1.0.0"), entry)
    assert not decide(Component(name="requests-toolbelt", version="1.0"), entry)


LODASH = affected(
    "npm", "lodash", ("introduced", "1.0.0-beta"), ("last_affected", "4.17.20"), kind="SEMVER"
)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("4.17.20", True),  # last_affected is inclusive
        ("4.17.21", False),
        ("v4.17.20", True),  # a leading v is ignored
        ("4.17.20+build.7", True),  # build metadata has no precedence
        ("1.0.0-beta", True),
        ("1.0.0-beta.2", True),
        ("1.0.0-alpha", False),  # alpha < beta
        ("1.0.0", True),
        ("0.9.9", False),
    ],
)
def test_npm_semver_last_affected(version: str, expected: bool) -> None:
    assert decide(comp("npm", "lodash", version), LODASH) is expected


LOG4J = affected(
    "Maven",
    "org.apache.logging.log4j:log4j-core",
    ("introduced", "2.0-beta9"),
    ("fixed", "2.15.0"),
)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("2.14.1", True),
        ("2.15.0", False),
        ("2.0-beta9", True),
        ("2.0-beta8", False),
        ("2.0-alpha1", False),  # alpha < beta
        ("2.0", True),  # the release is after its betas
        ("2.15.0-rc1", True),  # a release candidate is before the release
        ("2.15.0.Final", False),  # "final" is the release itself
        ("2.16.0", False),
    ],
)
def test_maven_log4shell_like_range(version: str, expected: bool) -> None:
    component = comp("Maven", "org.apache.logging.log4j:log4j-core", version)
    assert decide(component, LOG4J) is expected


OPENSSL_DEB = affected("Debian:12", "openssl", ("introduced", "0"), ("fixed", "3.0.11-1~deb12u2"))


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("3.0.11-1~deb12u1", True),
        ("3.0.11-1~deb12u2", False),
        ("3.0.11-1", False),  # ~ sorts before the empty string: deb12u2 < 3.0.11-1
        ("3.0.9-1", True),
        ("1:3.0.0-1", False),  # an epoch outranks everything after it
    ],
)
def test_debian_release_suffix_and_tilde(version: str, expected: bool) -> None:
    assert decide(comp("Debian", "openssl", version), OPENSSL_DEB) is expected


def test_debian_epochs() -> None:
    entry = affected("Debian:11", "zlib", ("introduced", "0"), ("fixed", "1:2.0"))
    assert decide(comp("Debian", "zlib", "2.9"), entry)  # no epoch is epoch 0: 2.9 < 1:2.0
    assert not decide(comp("Debian", "zlib", "1:2.3"), entry)


GO_NET = affected("Go", "golang.org/x/net", ("introduced", "0"), ("fixed", "0.17.0"))


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("v0.16.0", True),
        ("0.16.0", True),
        ("v0.17.0", False),
        ("v0.0.0-20230101000000-abcdef123456", True),  # a pseudo-version is a pre-release
        ("v0.17.0+incompatible", False),
    ],
)
def test_go_versions_with_and_without_v(version: str, expected: bool) -> None:
    assert decide(comp("Go", "golang.org/x/net", version), GO_NET) is expected


def test_go_listed_version_equals_its_v_form() -> None:
    entry = AffectedPackage("Go", "example.com/mod", versions=("1.2.3",))
    assert decide(comp("Go", "example.com/mod", "v1.2.3"), entry)
    assert not decide(comp("Go", "example.com/mod", "v1.2.4"), entry)


MULTI = affected(
    "crates.io",
    "http",
    # Out of order on purpose: the spec sorts events before walking them.
    ("introduced", "3.0.0"),
    ("fixed", "1.0.2"),
    ("fixed", "3.2.5"),
    ("introduced", "1.0.0"),
    kind="SEMVER",
)


@pytest.mark.parametrize(
    ("version", "interval"),
    [
        ("0.9.0", None),
        ("1.0.0", "[1.0.0, 1.0.2)"),
        ("1.0.1", "[1.0.0, 1.0.2)"),
        ("1.0.2", None),
        ("2.5.0", None),
        ("3.0.0", "[3.0.0, 3.2.5)"),
        ("3.2.4", "[3.0.0, 3.2.5)"),
        ("3.2.5", None),
        ("4.0.0", None),
    ],
)
def test_affected_fixed_then_reintroduced(version: str, interval: str | None) -> None:
    found = match_package(comp("crates.io", "http", version), "R-1", MULTI, cache=VersionCache())
    if interval is None:
        assert found is None
    else:
        assert found is not None
        assert f"is in {interval}" in found.reason
        assert found.fixed == ("1.0.2", "3.2.5")


def test_limit_events_bound_the_range() -> None:
    entry = affected("npm", "x", ("introduced", "0"), ("limit", "2.0.0"), kind="SEMVER")
    assert decide(comp("npm", "x", "1.9.9"), entry)
    assert not decide(comp("npm", "x", "2.0.0"), entry)
    star = affected("npm", "x", ("introduced", "1.0.0"), ("limit", "*"), kind="SEMVER")
    assert decide(comp("npm", "x", "99.0.0"), star)
    assert not decide(comp("npm", "x", "0.1.0"), star)


def test_listed_versions_match_exactly() -> None:
    entry = AffectedPackage("RubyGems", "bundler", versions=("1.14.0", "1.15.0.pre.1"))
    assert decide(comp("RubyGems", "bundler", "1.15.0.pre.1"), entry)
    assert not decide(comp("RubyGems", "bundler", "1.14.1"), entry)
    unknown = AffectedPackage("OSS-Fuzz", "icu", versions=("release-70-1",))
    assert decide(comp("OSS-Fuzz", "icu", "release-70-1"), unknown)
    assert not decide(comp("OSS-Fuzz", "icu", "release-70-2"), unknown)


GIT = OsvRange("GIT", (("introduced", "6e5755a2"), ("fixed", "c4345574")))


def test_git_only_ranges_are_unevaluable_not_a_match() -> None:
    entry = AffectedPackage("OSS-Fuzz", "icu", (GIT,))
    with pytest.raises(UnevaluableError, match="only GIT ranges"):
        decide(comp("OSS-Fuzz", "icu", "70.1"), entry)
    # With a versions[] list (OSV.dev fills it from the git tags) the list decides.
    listed = AffectedPackage("OSS-Fuzz", "icu", (GIT,), ("70.1",))
    assert decide(comp("OSS-Fuzz", "icu", "70.1"), listed)
    assert not decide(comp("OSS-Fuzz", "icu", "71.1"), listed)
    # A GIT range next to an ECOSYSTEM one: the ECOSYSTEM range decides.
    mixed = AffectedPackage(
        "PyPI",
        "pikepdf",
        (GIT, OsvRange("ECOSYSTEM", (("introduced", "2.8.0"), ("fixed", "2.10.0")))),
    )
    assert decide(comp("PyPI", "pikepdf", "2.9.2"), mixed)
    assert not decide(comp("PyPI", "pikepdf", "2.10.0"), mixed)


@pytest.mark.parametrize(
    ("component", "entry", "reason"),
    [
        (comp("PyPI", "requests", "not a version"), REQUESTS, "is not a pypi version"),
        (comp("Debian", "openssl", "!!"), OPENSSL_DEB, "is not a deb version"),
        (comp("PyPI", "requests", None), REQUESTS, "has no version"),
        (comp("PyPI", "requests", "1" * 300), REQUESTS, "too long"),
        (
            comp("PyPI", "requests", "1.0"),
            affected("PyPI", "requests", ("introduced", "0"), ("fixed", "later")),
            "'later' is not a pypi version",
        ),
    ],
)
def test_unparseable_versions_raise(
    component: Component, entry: AffectedPackage, reason: str
) -> None:
    with pytest.raises(UnevaluableError, match=reason):
        decide(component, entry)


def test_too_many_events_is_unevaluable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(m, "MAX_EVENTS_PER_RANGE", 3)
    events = [("introduced", "0"), ("fixed", "1.0"), ("introduced", "2.0"), ("fixed", "3.0")]
    with pytest.raises(UnevaluableError, match="events"):
        decide(comp("PyPI", "requests", "1.0"), affected("PyPI", "requests", *events))


OPENSSL_CPE = CpeMatch("openssl", "openssl", start_including="3.0.0", end_excluding="3.0.12")


def cpe_decide(component: Component, cpe: CpeMatch) -> Match | None:
    return match_cpe(component, "CVE-2023-0001", cpe, cache=VersionCache())


@pytest.mark.parametrize(
    ("version", "expected"),
    [("3.0.11", True), ("3.0.0", True), ("3.0.12", False), ("2.9.9", False), ("3.0.12-rc1", True)],
)
def test_cpe_start_including_end_excluding(version: str, expected: bool) -> None:
    assert (
        cpe_decide(cpe_comp("openssl", "openssl", version), OPENSSL_CPE) is not None
    ) is expected


def test_cpe_reason_and_fixed() -> None:
    found = cpe_decide(cpe_comp("openssl", "openssl", None, "3.0.11"), OPENSSL_CPE)
    assert found == Match(
        "CVE-2023-0001",
        "cpe",
        "openssl 3.0.11 is in [3.0.0, 3.0.12) (NVD cpe openssl:openssl)",
        ("3.0.12",),
    )


def test_cpe_other_bounds_and_letter_versions() -> None:
    excl = CpeMatch("openssl", "openssl", start_excluding="1.1.1", end_including="1.1.1v")
    assert cpe_decide(cpe_comp("openssl", "openssl", "1.1.1v"), excl) is not None
    assert cpe_decide(cpe_comp("openssl", "openssl", "1.1.1a"), excl) is not None
    assert cpe_decide(cpe_comp("openssl", "openssl", "1.1.1w"), excl) is None  # w after v
    assert cpe_decide(cpe_comp("openssl", "openssl", "1.1.1"), excl) is None  # excluded start
    four = CpeMatch("busybox", "busybox", end_excluding="1.36.1.2")
    assert cpe_decide(cpe_comp("busybox", "busybox", "1.36.1.1"), four) is not None
    assert cpe_decide(cpe_comp("busybox", "busybox", "1.36.1.10"), four) is None


def test_cpe_exact_version_and_component_cpe_version_wins() -> None:
    exact = CpeMatch("busybox", "busybox", "1.36.1")
    assert cpe_decide(cpe_comp("busybox", "busybox", "9.9", "1.36.1"), exact) is not None
    assert cpe_decide(cpe_comp("busybox", "busybox", "1.36.1", "1.36.2"), exact) is None
    assert cpe_decide(cpe_comp("busybox", "busybox", "1.36.1.0"), exact) is not None  # PEP 440
    assert cpe_decide(cpe_comp("busybox", "busybox", "1.36.0"), exact) is None


def test_cpe_star_without_bounds_matches_every_version() -> None:
    every = CpeMatch("linux", "linux_kernel")
    assert cpe_decide(cpe_comp("linux", "linux_kernel", "6.1.0"), every) is not None
    assert cpe_decide(cpe_comp("linux", "linux_kernel", None), every) is not None
    assert cpe_decide(
        cpe_comp("linux", "linux_kernel", None), CpeMatch("linux", "linux_kernel", "-")
    )


def test_cpe_vendor_or_product_mismatch() -> None:
    assert cpe_decide(cpe_comp("openssl", "libressl", "3.0.11"), OPENSSL_CPE) is None
    assert cpe_decide(cpe_comp("libressl", "openssl", "3.0.11"), OPENSSL_CPE) is None
    assert cpe_decide(comp("PyPI", "openssl", "3.0.11"), OPENSSL_CPE) is None
    assert cpe_decide(cpe_comp("openssl", "openssl", "3.0.11"), CpeMatch("*", "openssl")) is None


def test_cpe_bounds_need_a_version() -> None:
    with pytest.raises(UnevaluableError, match="has no version"):
        cpe_decide(cpe_comp("openssl", "openssl", None), OPENSSL_CPE)


semver_parts = st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30))


@settings(max_examples=300)
@given(v=semver_parts, a=semver_parts, b=semver_parts, eco=st.sampled_from(["npm", "PyPI", "Go"]))
def test_semver_decision_equals_tuple_order(
    v: tuple[int, int, int], a: tuple[int, int, int], b: tuple[int, int, int], eco: str
) -> None:
    low, high = sorted((a, b))
    if low == high:
        return
    text = ".".join
    entry = affected(
        eco,
        "pkg",
        ("introduced", text(map(str, low))),
        ("fixed", text(map(str, high))),
        kind="SEMVER" if eco == "npm" else "ECOSYSTEM",
    )
    component = comp(eco, "pkg", text(map(str, v)))
    assert decide(component, entry) is (low <= v < high)  # the oracle


def advisory(
    adv_id: str, *entries: AffectedPackage, cpes: tuple[CpeMatch, ...] = (), withdrawn: bool = False
) -> Advisory:
    return Advisory(
        adv_id, "osv", T0, affected=entries, cpes=cpes, withdrawn=T0 if withdrawn else None
    )


def test_index_skips_withdrawn_and_finds_candidates() -> None:
    advs = [
        advisory("A-1", REQUESTS),
        advisory("A-2", REQUESTS, withdrawn=True),
        advisory("A-3", LOG4J, cpes=(OPENSSL_CPE, CpeMatch("*", "x"))),
    ]
    index = AdvisoryIndex.from_advisories(advs)
    assert index.skipped == 1
    packages, cpes = index.candidates(comp("PyPI", "requests", "2.0"))
    assert [a for a, _ in packages] == ["A-1"] and list(cpes) == []
    _, cpes = index.candidates(cpe_comp("openssl", "openssl", "3.0.1"))
    assert [a for a, _ in cpes] == ["A-3"]
    raw = AdvisoryIndex([("A-9", REQUESTS)], [("C-9", OPENSSL_CPE)])
    assert [a for a, _ in raw.candidates(comp("PyPI", "requests", "1"))[0]] == ["A-9"]


def test_match_components_report() -> None:
    both = Component(
        name="openssl",
        version="3.0.11-1~deb12u1",
        ecosystem="Debian",
        package="openssl",
        cpe="cpe:2.3:a:openssl:openssl:3.0.11:*:*:*:*:*:*:*",
    )
    components = [
        both,
        comp("PyPI", "requests", "2.31.0"),
        comp("PyPI", "requests", "banana"),
        comp("PyPI", "requests", "2.0.0"),
    ]
    advs = [
        advisory("DSA-1", OPENSSL_DEB, cpes=(OPENSSL_CPE,)),  # package kept over cpe
        advisory("CVE-2", cpes=(OPENSSL_CPE,)),
        advisory("PYSEC-1", REQUESTS),
        advisory("PYSEC-0", REQUESTS, REQUESTS),  # two entries, one match
    ]
    report = match_components(components, AdvisoryIndex.from_advisories(advs), cache=VersionCache())
    assert [(x.advisory_id, x.via) for x in report.matches[0]] == [
        ("CVE-2", "cpe"),
        ("DSA-1", "package"),
    ]
    assert 1 not in report.matches and 2 not in report.matches
    assert [x.advisory_id for x in report.matches[3]] == ["PYSEC-0", "PYSEC-1"]
    assert report.unevaluable == 3
    assert report.samples[0] == "requests banana: PYSEC-1 PyPI: 'banana' is not a pypi version"
    slow = brute_force(components, advs)
    assert (slow.matches, slow.unevaluable) == (report.matches, report.unevaluable)


versions_st = st.sampled_from(["0.9.0", "1.0.0", "1.0.1", "2.0.0", "2.1.0-rc.1", "bad!", None])
names_st = st.sampled_from(["a", "b"])
entry_st = st.builds(
    lambda eco, name, lo, hi: affected(eco, name, ("introduced", lo), ("fixed", hi)),
    st.sampled_from(["npm", "PyPI"]),
    names_st,
    st.sampled_from(["0", "1.0.0", "1.0.1"]),
    st.sampled_from(["1.0.1", "2.0.0", "9"]),
)
cpe_st = st.builds(
    lambda product, hi: CpeMatch("v", product, end_excluding=hi),
    names_st,
    st.sampled_from([None, "1.0.1", "2.0.0"]),
)


@settings(max_examples=60, deadline=None)
@given(
    comps=st.lists(
        st.builds(
            lambda eco, name, v, with_cpe: Component(
                name=name,
                version=v,
                ecosystem=eco,
                package=name,
                cpe=f"cpe:2.3:a:v:{name}:*:*:*:*:*:*:*:*" if with_cpe else None,
            ),
            st.sampled_from(["npm", "PyPI"]),
            names_st,
            versions_st,
            st.booleans(),
        ),
        max_size=6,
    ),
    advs=st.lists(
        st.tuples(st.lists(entry_st, max_size=2), st.lists(cpe_st, max_size=2), st.booleans()),
        max_size=6,
    ),
)
def test_index_agrees_with_brute_force(
    comps: list[Component], advs: list[tuple[list[AffectedPackage], list[CpeMatch], bool]]
) -> None:
    advisories = [
        advisory(f"ADV-{i}", *e, cpes=tuple(c), withdrawn=w) for i, (e, c, w) in enumerate(advs)
    ]
    fast = match_components(comps, AdvisoryIndex.from_advisories(advisories), cache=VersionCache())
    slow = brute_force(comps, advisories)
    assert fast.matches == slow.matches
    assert fast.unevaluable == slow.unevaluable
    assert fast.decisions <= slow.decisions


def test_too_many_components(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(m, "MAX_COMPONENTS", 2)
    with pytest.raises(PayloadTooLargeError):
        match_components([comp("npm", "a", "1.0.0")] * 3, AdvisoryIndex(), cache=VersionCache())


def test_version_cache_is_bounded_and_remembers_failures() -> None:
    cache = VersionCache(maxsize=2)
    assert cache and len(cache) == 0  # an empty cache is not falsy (``cache or ...``)
    assert cache.parse("pypi", "1.0") is not None
    assert cache.parse("pypi", "nope!") is None
    assert cache.parse("pypi", "nope!") is None
    assert (cache.hits, cache.misses, len(cache)) == (1, 2, 2)
    cache.parse("deb", "1:2.3")
    assert len(cache) == 2
    with pytest.raises(ValueError, match="at least one"):
        VersionCache(maxsize=0)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("1.36.1-r28", True),
        ("1.36.1-r29", False),
        ("1.9.0-r0", False),  # before introduced 1.10.0 (a string order would say after)
        ("1.10.0-r0", True),
        ("1.37.0-r0", False),
    ],
)
def test_alpine_order_is_numeric(version: str, expected: bool) -> None:
    entry = affected("Alpine:v3.19", "busybox", ("introduced", "1.10.0"), ("fixed", "1.36.1-r29"))
    assert decide(comp("Alpine", "busybox", version), entry) is expected


def test_red_hat_rpm_order_with_epoch_and_stream_suffix() -> None:
    entry = affected(
        "Red Hat:enterprise_linux:9::appstream",
        "curl",
        ("introduced", "0"),
        ("fixed", "1:7.76.1-26.el9"),
    )
    assert decide(comp("Red Hat", "curl", "1:7.76.1-23.el9"), entry)
    assert not decide(comp("Red Hat", "curl", "1:7.76.1-26.el9"), entry)
    assert decide(comp("Red Hat", "curl", "7.99.0-1.el9"), entry)  # epoch 0 < epoch 1
