"""Feed parsers (fleetward.vulns.feeds) and the CVSS v3.1 base score (_cvss).

Fixtures under fixtures/feeds/ are hand-made in the real schemas (OSV 1.x,
NVD CVE API 2.0, CISA KEV, FIRST EPSS); zips and gzips are built here.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetward.errors import InvalidInputError, PayloadTooLargeError
from fleetward.vulns import _cvefeeds, _cvss, _feedio, feeds
from fleetward.vulns.records import (
    Advisory,
    AffectedPackage,
    CpeMatch,
    EpssScore,
    KevEntry,
    OsvRange,
    SkippedRecord,
)

FIXTURES = Path(__file__).parent / "fixtures" / "feeds"
OSV_DIR = FIXTURES / "osv"
UTC = dt.UTC


def _utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> dt.datetime:
    return dt.datetime(y, mo, d, h, mi, s, us, tzinfo=UTC)


def _osv(name: str) -> Advisory:
    return feeds.parse_osv((OSV_DIR / name).read_bytes(), where=name)


def _record(**overrides: Any) -> bytes:
    base: dict[str, Any] = {"id": "GHSA-aaaa-bbbb-cccc", "modified": "2024-01-01T00:00:00Z"}
    base.update(overrides)
    return json.dumps(base).encode()


# --- CVSS v3.1 base score ------------------------------------------------------


@pytest.mark.parametrize(
    ("vector", "score"),
    [
        # The brief's three, then published NVD scores of well-known CVEs.
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.8),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", 10.0),  # CVE-2021-44228
        ("CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:N/A:N", 5.5),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N", 7.5),  # CVE-2014-0160
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:L", 5.3),  # CVE-2023-5678
        ("CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H", 7.8),  # CVE-2023-0266
        ("CVSS:3.1/AV:N/AC:H/PR:N/UI:R/S:C/C:H/I:N/A:N", 6.1),  # CVE-2023-32681
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N", 6.1),  # typical XSS
        ("CVSS:3.1/AV:N/AC:L/PR:L/UI:N/S:C/C:H/I:H/A:H", 9.9),
        ("CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:N/A:N", 5.9),
        ("CVSS:3.1/AV:P/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N", 1.6),
        ("CVSS:3.1/AV:N/AC:L/PR:H/UI:R/S:C/C:L/I:L/A:N", 4.8),  # stored XSS, admin
        ("CVSS:3.1/AV:N/AC:L/PR:H/UI:N/S:C/C:L/I:L/A:N", 5.5),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N", 0.0),
        ("CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.8),
        # Temporal and environmental metrics do not change the base score.
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H/E:U/RL:O/RC:C/CR:H/MAV:L", 9.8),
    ],
)
def test_cvss_base_score_matches_published(vector: str, score: float) -> None:
    assert _cvss.base_score(vector) == score


@pytest.mark.parametrize(
    "vector",
    [
        "CVSS:2.0/AV:N/AC:L/Au:N/C:P/I:P/A:P",
        "AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
        "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H",  # A missing
        "CVSS:3.1/AV:X/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
        "CVSS:3.1/AV:N/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
        "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H/ZZ:1",
        "CVSS:3.1",
        "CVSS:3.1/" + "E:X/" * 100,
    ],
)
def test_cvss_refuses_malformed_vectors(vector: str) -> None:
    with pytest.raises(ValueError):
        _cvss.base_score(vector)


@pytest.mark.parametrize(
    ("score", "severity"),
    [(0.0, "none"), (0.1, "low"), (3.9, "low"), (4.0, "medium"), (6.9, "medium"),
     (7.0, "high"), (8.9, "high"), (9.0, "critical"), (10.0, "critical")],
)  # fmt: skip
def test_severity_bands(score: float, severity: str) -> None:
    assert _cvss.severity_for_score(score) == severity


# --- detect_kind ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("osv/GHSA-j8r2-6x86-q33q.json", "osv"),
        ("nvd-2.0.json", "nvd"),
        ("known_exploited_vulnerabilities.json", "kev"),
        ("epss_scores-2026-12-06.csv", "epss"),
    ],
)
def test_detect_kind_of_fixtures(name: str, kind: str) -> None:
    head = (FIXTURES / name).read_bytes()[:4096]
    assert feeds.detect_kind(Path(name).name, head) == kind
    assert feeds.detect_kind(Path(name).name + ".gz", gzip.compress(head)[:2048]) == kind


def test_detect_kind_zip_header_and_bare_epss_header() -> None:
    assert feeds.detect_kind("PyPI-all.zip", b"PK\x03\x04\x14\x00") == "osv"
    assert feeds.detect_kind("scores.csv", b"cve,epss,percentile\nCVE-1,0.1,0.2\n") == "epss"


@pytest.mark.parametrize("head", [b"", b"hello", b'{"foo": 1}', b"\x1f\x8bnot gzip", b"[1,2]"])
def test_detect_kind_refuses_the_rest(head: bytes) -> None:
    with pytest.raises(InvalidInputError):
        feeds.detect_kind("thing.json", head)


# --- OSV records ---------------------------------------------------------------


def test_osv_pypi_ecosystem_range_scores_the_cvss_vector() -> None:
    assert _osv("GHSA-j8r2-6x86-q33q.json") == Advisory(
        id="GHSA-j8r2-6x86-q33q",
        source="osv",
        modified=_utc(2023, 11, 8, 4, 12, 18, 674169),
        published=_utc(2023, 5, 22, 20, 36, 32),
        summary="Unintended leak of Proxy-Authorization header in requests",
        aliases=("CVE-2023-32681",),
        severity="medium",
        cvss_score=6.1,
        cvss_vector="CVSS:3.1/AV:N/AC:H/PR:N/UI:R/S:C/C:H/I:N/A:N",
        affected=(
            AffectedPackage(
                ecosystem="PyPI",
                name="requests",
                ranges=(OsvRange("ECOSYSTEM", (("introduced", "2.3.0"), ("fixed", "2.31.0"))),),
            ),
        ),
        references=(
            "https://github.com/psf/requests/security/advisories/GHSA-j8r2-6x86-q33q",
            "https://nvd.nist.gov/vuln/detail/CVE-2023-32681",
        ),
    )


def test_osv_npm_semver_last_affected() -> None:
    adv = _osv("GHSA-xvch-5gv4-984h.json")
    assert (adv.severity, adv.cvss_score) == ("critical", 9.8)
    assert adv.cves == ("CVE-2021-44906",)
    assert adv.affected == (
        AffectedPackage(
            "npm",
            "minimist",
            (OsvRange("SEMVER", (("introduced", "0"), ("last_affected", "0.2.3"))),),
        ),
        AffectedPackage(
            "npm",
            "minimist",
            (OsvRange("SEMVER", (("introduced", "1.0.0"), ("last_affected", "1.2.5"))),),
        ),
    )


def test_osv_debian_release_suffix_and_summary_from_details() -> None:
    adv = _osv("DEBIAN-CVE-2023-5678.json")
    assert adv.summary == "Issue summary: Generating excessively long X9.42 DH keys or checking"
    assert (adv.severity, adv.cvss_score, adv.cvss_vector) == ("unknown", None, None)
    (pkg,) = adv.affected
    assert pkg == AffectedPackage(
        ecosystem="Debian:12",
        name="openssl",
        ranges=(OsvRange("ECOSYSTEM", (("introduced", "0"), ("fixed", "3.0.13-1~deb12u1"))),),
        versions=("3.0.11-1~deb12u1", "3.0.11-1~deb12u2"),
    )
    assert pkg.key == "debian:openssl"
    assert adv.cves == ()


def test_osv_go_module() -> None:
    adv = _osv("GO-2023-2102.json")
    assert adv.aliases == ("CVE-2023-39325", "GHSA-4374-p667-p6c8")
    assert adv.affected[0].key == "go:golang.org/x/net"
    assert adv.affected[0].ranges == (
        OsvRange("SEMVER", (("introduced", "0"), ("fixed", "0.17.0"))),
    )
    assert adv.references == ("https://go.dev/cl/534215",)
    assert adv.severity == "unknown"


def test_osv_withdrawn_keeps_its_date_and_database_specific_score() -> None:
    adv = _osv("GHSA-withdrawn.json")
    assert adv.withdrawn == _utc(2024, 2, 1, 12)
    assert (adv.severity, adv.cvss_score, adv.cvss_vector) == ("high", 7.5, None)
    assert adv.affected[0].key == "pypi:example-lib"


def test_osv_git_only_record_is_valid_and_drops_the_packageless_entry() -> None:
    adv = _osv("OSV-2021-1234.json")
    (pkg,) = adv.affected
    assert (pkg.ecosystem, pkg.name) == ("OSS-Fuzz", "libxml2")
    assert pkg.ranges[0].type == "GIT"
    assert pkg.ranges[0].events == (
        ("introduced", "7ec1f5e2dbf52c1bb5ed3e5f5df3f8c0c8f1ae7e"),
        ("fixed", "0d8b2b2d8cb97e28891d9e3b7ff3bdb0e0fcdd3b"),
    )


def test_osv_versions_list_cvss_v4_unscored_label_used_and_offset_to_utc() -> None:
    adv = _osv("PYSEC-2024-0001.json")
    assert adv.modified == _utc(2024, 3, 1, 9)
    assert adv.affected == (AffectedPackage("PyPI", "tinyparse", (), ("1.0.0", "1.0.1", "1.1.0")),)
    assert adv.severity == "high"
    assert adv.cvss_score is None
    assert adv.cvss_vector is not None and adv.cvss_vector.startswith("CVSS:4.0/")


def test_osv_missing_modified_is_refused_with_its_reason() -> None:
    with pytest.raises(InvalidInputError, match=r"^GHSA-malformed\.json: modified is missing$"):
        _osv("GHSA-malformed.json")


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"id": None}, "id is not a non-empty string"),
        ({"id": "X" * 129}, "id is over 128 characters"),
        ({"modified": "2024-02-30T12:00Z"}, "modified '2024-02-30T12:00Z' is not a timestamp"),
        ({"modified": 20240101}, "modified is not a timestamp string"),
        ({"published": "soon"}, "published 'soon' is not a timestamp"),
        ({"aliases": "CVE-2024-1"}, "aliases is not a list"),
        ({"affected": {"package": {}}}, "affected is not a list"),
        ({"affected": [{"ranges": []}]}, "affected[0] has no package"),
        (
            {"affected": [{"package": {"ecosystem": "PyPI"}}]},
            "affected[0].package.name is not a non-empty string",
        ),
        (
            {"affected": [{"package": {"ecosystem": "PyPI", "name": "x"},
                           "ranges": [{"type": "NUMERIC", "events": [{"introduced": "0"}]}]}]},
            "affected[0].ranges[0].type 'NUMERIC' is not a known range type",
        ),
        (
            {"affected": [{"package": {"ecosystem": "PyPI", "name": "x"},
                           "ranges": [{"type": "SEMVER",
                                       "events": [{"introduced": "0", "fixed": "1"}]}]}]},
            "affected[0].ranges[0].events[0] is not an object with one event",
        ),
        (
            {"affected": [{"package": {"ecosystem": "PyPI", "name": "x"},
                           "ranges": [{"type": "SEMVER", "events": [{"patched": "1"}]}]}]},
            "affected[0].ranges[0].events[0] has unknown event 'patched'",
        ),
        (
            {"affected": [{"package": {"ecosystem": "npm", "name": "x"}, "versions": [1.0]}]},
            "affected[0].versions[0] is not a non-empty string",
        ),
        ({"severity": [{"type": "CVSS_V3"}]}, "severity[] entry is not {type, score}"),
    ],
)  # fmt: skip
def test_osv_malformed_fields_name_the_field(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        feeds.parse_osv(_record(**fields), where="r.json")
    assert str(info.value) == f"r.json: {reason}"


def test_osv_bad_bytes_and_size() -> None:
    with pytest.raises(InvalidInputError, match=r"^a: the record is not UTF-8 \(byte 0\)$"):
        feeds.parse_osv(b"\xff\xfe{}", where="a")
    with pytest.raises(InvalidInputError, match=r"^a: the record is not JSON"):
        feeds.parse_osv(b"{", where="a")
    with pytest.raises(InvalidInputError, match=r"is not JSON"):
        feeds.parse_osv(b"[" * 100_000, where="a")  # nesting past the recursion limit
    with pytest.raises(PayloadTooLargeError, match=r"^a: over 1048576 bytes$"):
        feeds.parse_osv(_record(details="x" * feeds.MAX_RECORD_BYTES), where="a")


def test_osv_bad_vector_costs_the_score_not_the_record() -> None:
    adv = feeds.parse_osv(
        _record(
            severity=[{"type": "CVSS_V3", "score": "CVSS:3.1/AV:Q"}],
            database_specific={"severity": "LOW", "cvss": {"score": 1e400}},
        ),
        where="r",
    )
    assert (adv.severity, adv.cvss_score, adv.cvss_vector) == ("low", None, None)


def test_osv_huge_integer_is_a_record_problem() -> None:
    data = b'{"id": "X-1", "modified": "2024-01-01T00:00:00Z", "withdrawn": ' + b"9" * 5000 + b"}"
    with pytest.raises(InvalidInputError, match="withdrawn is not a timestamp string"):
        feeds.parse_osv(data, where="r")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=30,
)
_KEYS = st.sampled_from(
    ["id", "modified", "published", "withdrawn", "aliases", "summary", "details", "severity",
     "affected", "references", "database_specific", "package", "ranges", "events", "type",
     "versions", "ecosystem", "name", "score", "cvss", "introduced", "fixed", "url"]
)  # fmt: skip
_OSVISH = st.recursive(
    st.none()
    | st.booleans()
    | st.floats()
    | st.sampled_from(
        ["2024-01-01T00:00:00Z", "GIT", "SEMVER", "CVSS_V3", "PyPI", "CVSS:3.1/AV:N", "x", ""]
    ),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_KEYS, children, max_size=5),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_JSON, _OSVISH, st.fixed_dictionaries(
    {"id": st.text(max_size=5), "modified": st.just("2024-01-01T00:00:00Z")},
    optional={"affected": _OSVISH, "severity": _OSVISH, "aliases": _OSVISH,
              "database_specific": _OSVISH, "references": _OSVISH},
)))  # fmt: skip
def test_osv_arbitrary_json_raises_only_invalid_input(value: Any) -> None:
    data = json.dumps(value).encode()
    try:
        adv = feeds.parse_osv(data, where="h")
    except InvalidInputError:
        return
    assert isinstance(adv, Advisory)


# --- iter_osv ------------------------------------------------------------------

_GOOD = sorted(p.name for p in OSV_DIR.glob("*.json") if p.name != "GHSA-malformed.json")


def _zip(path: Path, members: dict[str, bytes], level: int = 6) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_iter_osv_directory_sorted_one_error_per_bad_record() -> None:
    items = list(feeds.iter_osv(OSV_DIR))
    assert len(items) == 8
    errors = [i for i in items if isinstance(i, SkippedRecord)]
    assert errors == [SkippedRecord(where="GHSA-malformed.json", reason="modified is missing")]
    ids = [i.id for i in items if isinstance(i, Advisory)]
    assert ids == [_osv(name).id for name in _GOOD]


def test_iter_osv_single_file(tmp_path: Path) -> None:
    (item,) = feeds.iter_osv(OSV_DIR / "GO-2023-2102.json")
    assert isinstance(item, Advisory) and item.id == "GO-2023-2102"


def test_iter_osv_all_zip_streams_members(tmp_path: Path) -> None:
    members = {p.name: p.read_bytes() for p in sorted(OSV_DIR.glob("*.json"))}
    members["README.txt"] = b"not a record"
    members["nested/"] = b""
    path = _zip(tmp_path / "all.zip", members)
    items = list(feeds.iter_osv(path))
    errors = [i for i in items if isinstance(i, SkippedRecord)]
    assert errors == [
        SkippedRecord(where="all.zip:GHSA-malformed.json", reason="modified is missing"),
        SkippedRecord(where="all.zip:README.txt", reason="not a .json member, skipped"),
    ]
    advisories = [i for i in items if isinstance(i, Advisory)]
    assert advisories == [_osv(name) for name in _GOOD]


def test_iter_osv_zip_refuses_a_bomb_like_member_and_an_oversized_one(tmp_path: Path) -> None:
    bomb = _record(details=" " * (feeds.MAX_RECORD_BYTES - 200))  # ~1000x compressible
    big = _record(details="x" * feeds.MAX_RECORD_BYTES)
    good = (OSV_DIR / "GO-2023-2102.json").read_bytes()
    path = _zip(tmp_path / "all.zip", {"bomb.json": bomb, "big.json": big, "ok.json": good}, 9)
    items = list(feeds.iter_osv(path))
    assert items[:2] == [
        SkippedRecord(
            where="all.zip:bomb.json",
            reason="compression ratio over 200: refused (zip bomb)",
        ),
        SkippedRecord(where="all.zip:big.json", reason="over 1048576 bytes"),
    ]
    assert isinstance(items[2], Advisory) and items[2].id == "GO-2023-2102"


def test_iter_osv_zip_file_level_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _zip(tmp_path / "all.zip", {f"{i}.json": _record(id=f"X-{i}") for i in range(5)})
    monkeypatch.setattr(feeds, "MAX_ZIP_MEMBERS", 4)
    with pytest.raises(PayloadTooLargeError, match="has over 4 members"):
        list(feeds.iter_osv(path))
    monkeypatch.setattr(feeds, "MAX_ZIP_MEMBERS", 5)
    monkeypatch.setattr(feeds, "MAX_UNCOMPRESSED_BYTES", 100)
    with pytest.raises(PayloadTooLargeError, match="over 100"):
        list(feeds.iter_osv(path))


def test_iter_osv_zip_member_with_bad_crc_is_one_error(tmp_path: Path) -> None:
    path = _zip(tmp_path / "all.zip", {"a.json": _record(id="A-1"), "b.json": _record(id="B-1")}, 0)
    raw = bytearray(path.read_bytes())
    at = raw.index(b'"A-1"')
    raw[at + 1] = ord("Z")  # stored (level 0) data: flip a byte, the CRC no longer holds
    path.write_bytes(bytes(raw))
    items = list(feeds.iter_osv(path))
    assert isinstance(items[0], SkippedRecord) and "unreadable member" in items[0].reason
    assert isinstance(items[1], Advisory) and items[1].id == "B-1"


def test_iter_osv_directory_skips_a_fifo_and_reports_it(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "GO-2023-2102.json").write_bytes((OSV_DIR / "GO-2023-2102.json").read_bytes())
    os.mkfifo(tmp_path / "a" / "pipe.json")
    (tmp_path / "notes.txt").write_text("ignored: not *.json")
    items = list(feeds.iter_osv(tmp_path))
    assert isinstance(items[0], Advisory) and items[0].id == "GO-2023-2102"
    assert items[1] == SkippedRecord(where="a/pipe.json", reason="unreadable: not a regular file")
    assert len(items) == 2


def test_iter_osv_refuses_what_is_not_osv(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(InvalidInputError, match=r"x\.zip is not a readable zip"):
        list(feeds.iter_osv(tmp_path / "x.zip"))
    with pytest.raises(InvalidInputError, match=r"x\.txt is not an OSV"):
        list(feeds.iter_osv(tmp_path / "x.txt"))


# --- NVD -----------------------------------------------------------------------


def _nvd() -> tuple[list[Advisory], list[SkippedRecord]]:
    return feeds.parse_nvd((FIXTURES / "nvd-2.0.json").read_bytes(), where="nvd-2.0.json")


def test_nvd_openssl_range_primary_metric_first() -> None:
    advisories, _ = _nvd()
    assert advisories[0] == Advisory(
        id="CVE-2023-5678",
        source="nvd",
        modified=_utc(2024, 10, 14, 15, 15, 14, 93000),
        published=_utc(2023, 11, 6, 16, 15, 42, 670000),
        summary="Issue summary: Generating excessively long X9.42 DH keys or checking "
        "excessively long X9.42 DH keys or parameters may be very slow.",
        severity="medium",
        cvss_score=5.3,
        cvss_vector="CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:L",
        cpes=(
            CpeMatch("openssl", "openssl", "*", start_including="3.0.0", end_excluding="3.0.13"),
            CpeMatch("openssl", "openssl", "*", start_including="3.1.0", end_excluding="3.1.5"),
        ),
        references=("https://www.openssl.org/news/secadv/20231106.txt",),
    )


def test_nvd_busybox_exact_version_and_vulnerable_false_skipped() -> None:
    busybox = _nvd()[0][1]
    assert busybox.cpes == (CpeMatch("busybox", "busybox", "1.34.1"),)
    assert busybox.cpes[0].key == "busybox:busybox"
    assert (busybox.severity, busybox.cvss_score) == ("critical", 9.8)


def test_nvd_kernel_range_v31_preferred_over_v2() -> None:
    kernel = _nvd()[0][2]
    assert kernel.cpes == (
        CpeMatch("linux", "linux_kernel", "*", start_including="5.13", end_excluding="5.15.88"),
        CpeMatch("linux", "linux_kernel", "6.2-rc1"),  # the update field is kept
    )
    assert (kernel.severity, kernel.cvss_score) == ("high", 7.8)


def test_nvd_rejected_is_withdrawn_and_bad_record_is_one_error() -> None:
    advisories, errors = _nvd()
    rejected = advisories[3]
    assert rejected.id == "CVE-2023-4001"
    assert rejected.withdrawn == rejected.modified == _utc(2024, 2, 2, 9, 15, 10)
    assert (rejected.severity, rejected.cpes) == ("unknown", ())
    assert len(advisories) == 4
    assert errors == [
        SkippedRecord(
            where="nvd-2.0.json:CVE-2024-9999",
            reason="lastModified 'last tuesday' is not a timestamp",
        )
    ]


def _nvd_doc(*cves: dict[str, Any]) -> dict[str, Any]:
    return {"format": "NVD_CVE", "version": "2.0", "vulnerabilities": [{"cve": c} for c in cves]}


def _cve(cve_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": cve_id, "lastModified": "2024-01-01T00:00:00.000", **fields}


def test_nvd_v2_only_nan_huge_and_bad_cpe_are_per_record() -> None:
    v2_data = {"vectorString": "AV:N/AC:L/Au:N/C:P/I:P/A:P", "baseScore": 7.5}
    v2 = {"cvssMetricV2": [{"type": "Primary", "baseSeverity": "HIGH", "cvssData": v2_data}]}
    no_vendor = {"vulnerable": True, "criteria": "cpe:2.3:a:*:*:1.0:*:*:*:*:*:*:*"}
    doc = _nvd_doc(
        _cve("CVE-2010-0001", metrics=v2),
        _cve("CVE-2010-0002", metrics={"cvssMetricV31": [{"cvssData": {"baseScore": math.nan}}]}),
        _cve("CVE-2010-0003", metrics={"cvssMetricV30": [{"cvssData": {"baseScore": 1e999}}]}),
        _cve("CVE-2010-0004", configurations=[{"nodes": [{"cpeMatch": [no_vendor]}]}]),
        _cve("C" * 200),
        "not an object",  # type: ignore[arg-type]
    )
    doc["vulnerabilities"].append(["not", "an", "object"])
    raw = json.dumps(doc).encode()  # json writes NaN/Infinity, as a hostile feed may
    advisories, errors = feeds.parse_nvd(gzip.compress(raw), where="p.json.gz")
    (only,) = advisories
    assert (only.id, only.severity, only.cvss_score) == ("CVE-2010-0001", "high", 7.5)
    assert [(e.where, e.reason) for e in errors] == [
        ("p.json.gz:CVE-2010-0002",
         "metrics.cvssMetricV31[].cvssData.baseScore nan is not a score between 0 and 10"),
        ("p.json.gz:CVE-2010-0003",
         "metrics.cvssMetricV30[].cvssData.baseScore inf is not a score between 0 and 10"),
        ("p.json.gz:CVE-2010-0004",
         "configurations[0].nodes[0].cpeMatch[0].criteria 'cpe:2.3:a:*:*:1.0:*:*:*:*:*:*:*' "
         "names no vendor/product"),
        ("p.json.gz:" + "C" * 128, "id is over 128 characters"),
        ("p.json.gz:[5]", "cve is not an object"),
        ("p.json.gz:[6]", "not an object with a cve"),
    ]  # fmt: skip


def test_nvd_file_level_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidInputError, match=r"is not a NVD CVE 2\.0 file"):
        feeds.parse_nvd(b'{"resultsPerPage": 0}', where="n")
    with pytest.raises(InvalidInputError, match="n is not JSON"):
        feeds.parse_nvd(b"<html>", where="n")
    monkeypatch.setattr(_cvefeeds, "MAX_NVD_BYTES", 1000)
    with pytest.raises(PayloadTooLargeError, match="inflates to over 1000 bytes"):
        feeds.parse_nvd(gzip.compress(b" " * 5000), where="n")
    with pytest.raises(PayloadTooLargeError, match="is over 1000 bytes"):
        feeds.parse_nvd(b" " * 1001, where="n")


def test_error_list_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_feedio, "MAX_REPORTED_ERRORS", 3)
    doc = _nvd_doc(*[_cve(f"CVE-2020-{i:04d}", lastModified="x") for i in range(10)])
    advisories, errors = feeds.parse_nvd(json.dumps(doc).encode(), where="n")
    assert advisories == []
    assert [e.where for e in errors] == [
        "n:CVE-2020-0000",
        "n:CVE-2020-0001",
        "n:CVE-2020-0002",
        "n",
    ]
    assert errors[-1].reason == "7 more bad records, not listed"


# --- KEV -----------------------------------------------------------------------


def test_kev_catalog() -> None:
    data = (FIXTURES / "known_exploited_vulnerabilities.json").read_bytes()
    entries, errors = feeds.parse_kev(data, where="kev.json")
    assert entries == [
        KevEntry(
            cve="CVE-2021-44228",
            vendor="Apache",
            product="Log4j2",
            name="Apache Log4j2 Remote Code Execution Vulnerability",
            date_added=dt.date(2021, 12, 10),
            due_date=dt.date(2021, 12, 24),
            ransomware=True,
            required_action="For all affected software assets for which updates exist, the only "
            "acceptable remediation actions are: 1) Apply updates; OR 2) remove affected assets "
            "from agency networks.",
        ),
        KevEntry(
            cve="CVE-2023-4966",
            vendor="Citrix",
            product="NetScaler ADC and NetScaler Gateway",
            name="Citrix NetScaler ADC and NetScaler Gateway Buffer Overflow Vulnerability",
            date_added=dt.date(2023, 10, 18),
            due_date=dt.date(2023, 11, 8),
            ransomware=False,
            required_action="Apply mitigations per vendor instructions or discontinue use of "
            "the product if mitigations are unavailable.",
        ),
    ]
    assert errors == [
        SkippedRecord(where="kev.json:CVE-2024-3400", reason="dateAdded '2024-13-45' is not a date")
    ]


def test_kev_bad_entries_and_file() -> None:
    doc = {"catalogVersion": "1", "vulnerabilities": [
        {"cveID": "GHSA-1", "dateAdded": "2024-01-01"},
        {"cveID": "CVE-2024-1", "dateAdded": "2024-01-01", "knownRansomwareCampaignUse": "Yes"},
        {"cveID": "CVE-2024-2", "dateAdded": "2024-01-01", "vendorProject": 7},
        {"dateAdded": "2024-01-01"},
    ]}  # fmt: skip
    entries, errors = feeds.parse_kev(json.dumps(doc).encode())
    assert entries == []
    assert [(e.where, e.reason) for e in errors] == [
        ("kev:GHSA-1", "cveID 'GHSA-1' is not a CVE id"),
        ("kev:CVE-2024-1", "knownRansomwareCampaignUse 'Yes' is unknown"),
        ("kev:CVE-2024-2", "vendorProject is not a str"),
        ("kev:[3]", "cveID is not a non-empty string"),
    ]
    with pytest.raises(InvalidInputError, match="kev is not UTF-8"):
        feeds.parse_kev(b'{"vulnerabilities": ["\xff"]}')


# --- EPSS ----------------------------------------------------------------------

_EPSS_EXPECTED = [
    EpssScore("CVE-2021-44228", 0.94358, 0.99957, dt.date(2026, 12, 6)),
    EpssScore("CVE-2023-5678", 0.00123, 0.48211, dt.date(2026, 12, 6)),
    EpssScore("CVE-2023-4966", 0.94312, 0.99921, dt.date(2026, 12, 6)),
]
_EPSS_ERRORS = [
    SkippedRecord(where="e:line 5", reason="epss 'NaN' is not between 0 and 1"),
    SkippedRecord(where="e:line 7", reason="'not-a-cve' is not a CVE id"),
]


@pytest.mark.parametrize("compress", [False, True])
def test_epss_csv_plain_and_gzip(compress: bool) -> None:
    data = (FIXTURES / "epss_scores-2026-12-06.csv").read_bytes()
    if compress:
        data = gzip.compress(data)
    scores, errors = feeds.parse_epss(data, where="e")
    assert scores == _EPSS_EXPECTED
    assert errors == _EPSS_ERRORS


def test_epss_rows_without_comment_and_hostile_rows() -> None:
    rows = [
        b"cve,epss,percentile",
        b"CVE-2020-0001,0.5,0.5",
        b"CVE-2020-0002,1e999,0.5",
        b"CVE-2020-0003,1.5,0.5",
        b"CVE-2020-0004,0.5",
        b"CVE-2020-\xff,0.5,0.5",
        b"CVE-2020-0006," + b"9" * 300 + b",0.5",
        b"CVE-2020-0007,abc,0.5",
        b"",
    ]
    scores, errors = feeds.parse_epss(b"\r\n".join(rows))
    assert scores == [EpssScore("CVE-2020-0001", 0.5, 0.5)]
    assert [(e.where, e.reason) for e in errors] == [
        ("epss:line 3", "epss '1e999' is not between 0 and 1"),
        ("epss:line 4", "epss '1.5' is not between 0 and 1"),
        ("epss:line 5", "2 fields, not 3"),
        ("epss:line 6", "not UTF-8"),
        ("epss:line 7", "over 256 characters"),
        ("epss:line 8", "epss 'abc' is not a number"),
    ]


def test_epss_file_level_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidInputError, match="no cve,epss,percentile header"):
        feeds.parse_epss(b"#model_version:v1\nCVE-2020-1,0.1,0.1\n")
    with pytest.raises(InvalidInputError, match="truncated gzip"):
        feeds.parse_epss(gzip.compress(b"cve,epss,percentile\n" * 100)[:-12])
    monkeypatch.setattr(_cvefeeds, "MAX_EPSS_BYTES", 1000)
    bomb = io.BytesIO()
    with gzip.GzipFile(fileobj=bomb, mode="wb") as gz:
        gz.write(b"cve,epss,percentile\n" + b"0" * 10_000_000)
    with pytest.raises(PayloadTooLargeError, match="inflates to over 1000 bytes"):
        feeds.parse_epss(bomb.getvalue())


# --- Whole-file parsers never leak another exception ---------------------------


@settings(max_examples=200, deadline=None)
@given(_JSON, _OSVISH)
def test_nvd_and_kev_arbitrary_records_are_record_errors(value: Any, osvish: Any) -> None:
    for item in (value, osvish, {"cve": value}, {"cve": osvish}):
        data = json.dumps({"vulnerabilities": [item]}).encode()
        for parse in (feeds.parse_nvd, feeds.parse_kev):
            parsed, errors = parse(data, where="f")
            assert len(parsed) + len(errors) == 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_epss_arbitrary_rows_are_record_errors(rows: bytes) -> None:
    scores, errors = feeds.parse_epss(b"cve,epss,percentile\n" + rows)
    assert len(scores) + len(errors) <= rows.count(b"\n") + rows.count(b"\r") + 1
