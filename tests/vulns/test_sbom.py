"""SBOM parsing: the components kept, the ones left out and every refusal."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetward.errors import InvalidInputError, PayloadTooLargeError
from fleetward.ota.release import MAX_SBOM_BYTES
from fleetward.vulns import sbom
from fleetward.vulns.records import Component
from fleetward.vulns.sbom import looks_like_sbom, parse_sbom, sbom_digest

FIXTURES = Path(__file__).parent / "fixtures" / "sbom"
ACCEPTED = "CycloneDX JSON (specVersion 1.4, 1.5 or 1.6) or SPDX JSON (spdxVersion SPDX-2.3)"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def cdx(components: list[dict[str, Any]], version: str = "1.5", **extra: Any) -> bytes:
    doc = {"bomFormat": "CycloneDX", "specVersion": version, "version": 1, **extra}
    doc["components"] = components
    return json.dumps(doc).encode()


def summary(c: Component) -> tuple[str | None, ...]:
    return (c.name, c.version, c.purl, c.key, c.cpe_key, c.bom_ref)


def test_yocto_image_cyclonedx_1_5() -> None:
    parsed = parse_sbom(fixture("yocto-image.cdx.json"))
    assert (parsed.format, parsed.spec_version, parsed.skipped) == ("cyclonedx", "1.5", ())
    # metadata.component (gateway-image) is the release itself: left out.
    assert [summary(c) for c in parsed.components] == [
        (
            "busybox",
            "1.36.1-r0",
            "pkg:opkg/busybox@1.36.1-r0?arch=aarch64_cortex-a53",
            None,  # OSV has no OpenWrt ecosystem: busybox matches by CPE
            "busybox:busybox",
            "busybox@1.36.1",
        ),
        (
            "openssl",
            "3.0.11-1~deb12u1",
            "pkg:deb/debian/openssl@3.0.11-1~deb12u1?arch=arm64&distro=debian-12",
            "debian:openssl",
            "openssl:openssl",
            "openssl@3.0.11",
        ),
        (
            "linux-yocto",
            "6.1.38",
            "pkg:generic/linux-yocto@6.1.38",
            None,
            "linux:linux_kernel",
            "linux@6.1.38",
        ),
        (
            "acme-wifi-sdk",
            "2.4.1",
            "pkg:generic/acme-silicon/acme-wifi-sdk@2.4.1",
            None,
            "acme_silicon:wifi_sdk",
            "vendor-sdk",
        ),
        ("zlib", "1.2.13-r1", "pkg:opkg/zlib@1.2.13-r1", None, "zlib:zlib", "zlib@1.2.13"),
    ]
    kernel = parsed.components[2]
    assert kernel.cpe == "cpe:2.3:o:linux:linux_kernel:6.1.38:*:*:*:*:*:*:*"
    assert kernel.cpe_version == "6.1.38"
    assert parsed.components[1].ecosystem == "Debian"


def test_python_app_cyclonedx_1_6_flattens_nested_components() -> None:
    parsed = parse_sbom(fixture("python-app.cdx.json"))
    assert (parsed.format, parsed.spec_version, parsed.skipped) == ("cyclonedx", "1.6", ())
    assert [(c.name, c.key, c.version) for c in parsed.components] == [
        ("requests", "pypi:requests", "2.31.0"),
        ("urllib3", "pypi:urllib3", "2.0.6"),  # nested in requests
        ("Jinja2", "pypi:jinja2", "3.1.2"),
        ("web-ui", None, "1.8.0"),  # no purl, no CPE: kept, never matches
        ("traverse", "npm:@babel/traverse", "7.22.0"),  # nested in web-ui
        ("lodash", "npm:lodash", "4.17.20"),
        ("log4j-core", "maven:org.apache.logging.log4j:log4j-core", "2.14.1"),
    ]
    by_name = {c.name: c for c in parsed.components}
    assert by_name["Jinja2"].purl == "pkg:pypi/jinja2@3.1.2"  # canonical form
    assert by_name["traverse"].package == "@babel/traverse"
    assert by_name["log4j-core"].package == "org.apache.logging.log4j:log4j-core"
    assert "fleet-console" not in by_name


def test_cyclonedx_1_4_converts_a_cpe_2_2_uri() -> None:
    parsed = parse_sbom(fixture("cdx-1.4.json"))
    assert parsed.spec_version == "1.4"
    (curl,) = parsed.components
    assert curl.cpe == "cpe:2.3:a:haxx:curl:8.4.0:*:*:*:*:*:*:*"
    assert (curl.cpe_key, curl.cpe_version, curl.key) == ("haxx:curl", "8.4.0", None)


def test_spdx_2_3_packages_with_purl_and_cpe() -> None:
    parsed = parse_sbom(fixture("gateway.spdx.json"))
    assert (parsed.format, parsed.spec_version, parsed.skipped) == ("spdx", "SPDX-2.3", ())
    # The package the document DESCRIBES is the release itself: left out.
    assert [summary(c) for c in parsed.components] == [
        (
            "openssl",
            "3.0.11-1~deb12u1",
            "pkg:deb/debian/openssl@3.0.11-1~deb12u1?arch=arm64",
            "debian:openssl",
            "openssl:openssl",
            "SPDXRef-Package-openssl",
        ),
        (
            "busybox",
            "1.36.1-r0",
            "pkg:opkg/busybox@1.36.1-r0",
            None,
            "busybox:busybox",
            "SPDXRef-Package-busybox",
        ),
        (
            "curl",
            "8.4.0",
            "pkg:generic/curl@8.4.0",
            None,
            "haxx:curl",
            "SPDXRef-Package-curl",
        ),
    ]
    # cpe22Type is converted to a CPE 2.3 formatted string.
    assert parsed.components[1].cpe == "cpe:2.3:a:busybox:busybox:1.36.1:*:*:*:*:*:*:*"


def test_identifier_rules() -> None:
    parsed = parse_sbom(fixture("identifiers.cdx.json"))
    assert [(c.bom_ref, c.purl, c.key, c.cpe_key) for c in parsed.components] == [
        # A malformed purl is dropped; the CPE keeps the component.
        ("bad-purl-with-cpe", None, None, "dropbear_ssh_project:dropbear_ssh"),
        # Unknown purl types are kept (inventory) without an OSV package.
        ("unknown-type", "pkg:qpkg-unknown/qnap/qnap-thing@5.1", None, None),
        ("unknown-type-with-cpe", "pkg:generic/u-boot@2023.01", None, "denx:u-boot"),
        ("no-ids", None, None, None),
        ("go", "pkg:golang/github.com/gin-gonic/gin@v1.9.0", "go:github.com/gin-gonic/gin", None),
        ("alpine", "pkg:apk/alpine/musl@1.2.4-r2?arch=aarch64", "alpine:musl", None),
        # rpm of a distribution OSV does not cover: no guessing.
        ("rpm-fedora", "pkg:rpm/fedora/glibc@2.38-7.fc39", None, None),
    ]
    assert parsed.skipped == (
        "components[1]: invalid purl 'not-a-purl' and no usable CPE",
        "components[5]: invalid CPE 'cpe:2.3:a:dnsmasq' and no usable purl",
    )


@pytest.mark.parametrize(
    ("purl", "ecosystem", "package"),
    [
        ("pkg:cargo/rand@0.8.5", "crates.io", "rand"),
        ("pkg:gem/rails@7.0.0", "RubyGems", "rails"),
        ("pkg:nuget/Newtonsoft.Json@13.0.1", "NuGet", "Newtonsoft.Json"),
        ("pkg:composer/laravel/framework@10.0.0", "Packagist", "laravel/framework"),
        ("pkg:hex/phoenix@1.7.0", "Hex", "phoenix"),
        ("pkg:pub/http@1.1.0", "Pub", "http"),
        ("pkg:swift/github.com/apple/swift-nio@2.0.0", "SwiftURL", "github.com/apple/swift-nio"),
        ("pkg:conan/zlib@1.3", "ConanCenter", "zlib"),
        ("pkg:deb/ubuntu/openssl@3.0.2-0ubuntu1.10", "Ubuntu", "openssl"),
        ("pkg:rpm/redhat/openssl@3.0.7-18.el9", "Red Hat", "openssl"),
        ("pkg:apk/wolfi/curl@8.4.0-r0", "Wolfi", "curl"),
        ("pkg:golang/golang.org/x/net@v0.17.0#http2", "Go", "golang.org/x/net/http2"),
        ("pkg:github/openwrt/openwrt@v23.05.0", None, None),
        ("pkg:deb/raspbian/openssl@3.0.11", None, None),
        ("pkg:pypi/acme/requests@2.31.0", None, None),  # PyPI has no namespaces
    ],
)
def test_purl_ecosystems(purl: str, ecosystem: str | None, package: str | None) -> None:
    (c,) = parse_sbom(cdx([{"type": "library", "name": "x", "purl": purl}])).components
    assert (c.ecosystem, c.package) == (ecosystem, package)


def test_version_comes_from_the_purl_then_the_component() -> None:
    comps = [
        {"type": "library", "name": "a", "version": "9", "purl": "pkg:npm/a@1.0.0"},
        {"type": "library", "name": "b", "version": "2.0.0", "purl": "pkg:npm/b"},
    ]
    assert [c.version for c in parse_sbom(cdx(comps)).components] == ["1.0.0", "2.0.0"]


def test_overlong_fields_leave_the_component_out() -> None:
    comps = [
        {"type": "library", "name": "n" * (sbom.MAX_NAME_LENGTH + 1)},
        {"type": "library", "name": "v", "version": "1" * (sbom.MAX_VERSION_LENGTH + 1)},
        {"type": "library", "name": "p", "purl": "pkg:npm/p@" + "1" * sbom.MAX_PURL_LENGTH},
        {"type": "library", "name": "nul\u0000"},
        {"type": "library", "name": "s", "purl": "pkg:npm/s@1", "version": "\ud800"},
        {"type": "library", "name": "ok", "version": "1.0"},
    ]
    parsed = parse_sbom(cdx(comps))
    assert [c.name for c in parsed.components] == ["ok"]
    assert parsed.skipped == (
        "components[0]: name longer than 512 characters",
        "components[1]: version longer than 256 characters",
        "components[2]: purl longer than 2048 characters",
        "components[3]: name contains NUL or a lone surrogate",
        "components[4]: version contains NUL or a lone surrogate",
    )


def test_components_past_the_limit_are_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sbom, "MAX_COMPONENTS", 3)
    comps = [{"type": "library", "name": f"c{i}"} for i in range(5)]
    parsed = parse_sbom(cdx(comps))
    assert [c.name for c in parsed.components] == ["c0", "c1", "c2"]
    assert parsed.skipped == ("2 components past the limit of 3 left out",)


def nested(levels: int) -> dict[str, Any]:
    comp: dict[str, Any] = {"type": "library", "name": f"level{levels}"}
    for level in range(levels - 1, 0, -1):
        comp = {"type": "library", "name": f"level{level}", "components": [comp]}
    return comp


def test_nesting_deeper_than_the_limit_is_left_out() -> None:
    parsed = parse_sbom(cdx([nested(sbom.MAX_COMPONENT_DEPTH + 2)]))
    assert len(parsed.components) == sbom.MAX_COMPONENT_DEPTH
    assert parsed.components[-1].name == f"level{sbom.MAX_COMPONENT_DEPTH}"
    (reason,) = parsed.skipped
    assert reason.endswith("nested deeper than 16 levels (with its sub-components)")


def test_json_nested_too_deeply_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="nested deeper than 48 levels"):
        parse_sbom(cdx([nested(30)]))
    with pytest.raises(InvalidInputError, match="not UTF-8 JSON"):
        parse_sbom(b"[" * 200_000)


def test_duplicates_are_kept_once_and_metadata_children_are_kept() -> None:
    top = {"type": "firmware", "name": "image", "components": [{"type": "library", "name": "a"}]}
    # The schema refuses duplicates within one array; across arrays they are kept once.
    comps = [{"type": "library", "name": "b", "bom-ref": "x"}, {"type": "library", "name": "a"}]
    parsed = parse_sbom(cdx(comps, metadata={"component": top}))
    assert [(c.name, c.bom_ref) for c in parsed.components] == [("a", None), ("b", "x")]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "cdx-1.3.json",
            f"CycloneDX specVersion '1.3' is not supported; expected {ACCEPTED}",
        ),
        (
            "cdx-no-name.cdx.json",
            "CycloneDX 1.5 schema validation failed at /components/1: "
            "'name' is a required property",
        ),
        ("spdx-2.2.spdx.json", f"SPDX version 'SPDX-2.2' is not supported; expected {ACCEPTED}"),
        ("not-json.txt", f"SBOM is not UTF-8 JSON; expected {ACCEPTED}"),
    ],
)
def test_refusals(name: str, message: str) -> None:
    with pytest.raises(InvalidInputError) as exc:
        parse_sbom(fixture(name))
    assert str(exc.value) == message


def test_wrong_component_type_is_refused() -> None:
    with pytest.raises(InvalidInputError) as exc:
        parse_sbom(fixture("cdx-wrong-type.cdx.json"))
    assert str(exc.value).startswith(
        "CycloneDX 1.6 schema validation failed at /components/0/type: "
        "'shared-object' is not one of ['application', "
    )


def test_spdx_missing_required_fields_is_refused() -> None:
    with pytest.raises(InvalidInputError) as exc:
        parse_sbom(fixture("spdx-missing-fields.spdx.json"))
    text = str(exc.value)
    assert text.startswith("SPDX document could not be parsed: ")
    assert "CreationInfo does not exist." in text


def test_spdx_that_parses_but_does_not_validate_is_refused() -> None:
    doc = json.loads(fixture("gateway.spdx.json"))
    doc["relationships"][0]["relatedSpdxElement"] = "SPDXRef-Package-nowhere"
    with pytest.raises(InvalidInputError, match=r"^SPDX document is invalid \(1 problems\): "):
        parse_sbom(json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[]", f"SBOM is not a JSON object; expected {ACCEPTED}"),
        (b'{"hello": "world"}', f"not a recognised SBOM; expected {ACCEPTED}"),
        (b'{"bomFormat": "CycloneDX", "specVersion": NaN}', "SBOM is not UTF-8 JSON; expected"),
        (b'{"spdxVersion": 3}', "SPDX version 3 is not supported; expected"),
        (b"\xff\xfe{}", "SBOM is not UTF-8 JSON; expected"),
    ],
)
def test_not_an_sbom(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInputError) as exc:
        parse_sbom(data)
    assert str(exc.value).startswith(message)


def test_oversize_is_refused_before_parsing() -> None:
    data = cdx([{"type": "library", "name": "x" * MAX_SBOM_BYTES}])
    with pytest.raises(PayloadTooLargeError, match="limited to 4194304 bytes"):
        parse_sbom(data)
    with pytest.raises(PayloadTooLargeError):
        looks_like_sbom(data)


def test_schema_errors_are_located_across_chunks() -> None:
    comps: list[dict[str, Any]] = [{"type": "library", "name": f"c{i}"} for i in range(40)]
    comps[37]["type"] = "blob"
    with pytest.raises(InvalidInputError, match=r"^CycloneDX 1\.5 schema validation failed at "):
        parse_sbom(cdx(comps))
    with pytest.raises(InvalidInputError, match=r"at /components/37/type: 'blob' is not one of"):
        parse_sbom(cdx(comps))
    comps[37]["type"] = "library"
    comps[1]["components"] = [{"type": "library", "name": "n"}, {"type": "library"}]
    with pytest.raises(InvalidInputError, match=r"at /components/1/components/1: 'name' is a req"):
        parse_sbom(cdx(comps))


def test_duplicate_items_are_refused_across_chunks() -> None:
    comps = [{"type": "library", "name": f"c{i}"} for i in range(40)]
    comps[35] = dict(comps[2])
    with pytest.raises(InvalidInputError) as exc:
        parse_sbom(cdx(comps))
    assert str(exc.value) == (
        "CycloneDX 1.5 schema validation failed at /components: "
        "items 2 and 35 are identical (uniqueItems)"
    )


def test_arrays_too_costly_to_validate_are_refused() -> None:
    # Services nested in a service are not cut up: their pairs are counted.
    inner = [{"name": f"s{i}"} for i in range(700)]
    services = [{"name": "api", "services": inner}]
    with pytest.raises(InvalidInputError, match="arrays too large to validate"):
        parse_sbom(cdx([], services=services))
    # Arrays of strings are sorted, not compared pairwise.
    deps = [{"ref": "root", "dependsOn": [f"c{i}" for i in range(2_000)]}]
    assert parse_sbom(cdx([], dependencies=deps)).components == ()
    # Arrays without uniqueItems (properties) cost nothing to compare.
    props = [{"name": f"p{i}", "value": "v"} for i in range(700)]
    assert parse_sbom(cdx([{"type": "library", "name": "x", "properties": props}])).components


def test_urls_get_a_cheap_check() -> None:
    refs = [{"type": "website", "url": f"https://e.example/{i}"} for i in range(300)]
    comps = [{"type": "library", "name": f"c{i}", "externalReferences": refs} for i in range(5)]
    assert len(parse_sbom(cdx(comps)).components) == 5  # 1,500 URLs: the parser took 40 s
    comps[3]["externalReferences"] = [{"type": "vcs", "url": "https://e.example/a b"}]
    with pytest.raises(InvalidInputError, match=r"/components/3/externalReferences/0/url: "):
        parse_sbom(cdx(comps))
    comps[3]["externalReferences"] = [{"type": "vcs", "url": 7}]
    with pytest.raises(InvalidInputError, match=r"/components/3/externalReferences/0/url: 7 is"):
        parse_sbom(cdx(comps))


def test_schema_validation_needs_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("schema validation tried to reach the network")

    monkeypatch.setattr(sbom, "_VALIDATORS", {})  # build the validators afresh
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    for name in ("cdx-1.4.json", "yocto-image.cdx.json", "python-app.cdx.json"):
        assert parse_sbom(fixture(name)).components
    assert parse_sbom(fixture("gateway.spdx.json")).components


def test_looks_like_sbom_and_digest() -> None:
    assert looks_like_sbom(fixture("python-app.cdx.json")) == "cyclonedx"
    assert looks_like_sbom(fixture("gateway.spdx.json")) == "spdx"
    # A sniff: no schema validation.
    assert looks_like_sbom(fixture("cdx-no-name.cdx.json")) == "cyclonedx"
    with pytest.raises(InvalidInputError, match=r"specVersion '1\.3' is not supported"):
        looks_like_sbom(fixture("cdx-1.3.json"))
    data = fixture("gateway.spdx.json")
    assert sbom_digest(data) == hashlib.sha256(data).hexdigest()
    assert len(sbom_digest(b"")) == 64


def test_many_components() -> None:
    comps = [
        {"type": "library", "name": f"p{i}", "version": "1.0", "purl": f"pkg:pypi/p{i}@1.0"}
        for i in range(2_000)
    ]
    parsed = parse_sbom(cdx(comps))
    assert len(parsed.components) == 2_000
    assert parsed.components[1999].key == "pypi:p1999"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
headers = st.sampled_from(
    [
        {"bomFormat": "CycloneDX", "specVersion": "1.5"},
        {"bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1},
        {"spdxVersion": "SPDX-2.3"},
        {},
    ]
)
components = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["library", "application"]), "name": st.text(max_size=10)},
        optional={
            "purl": st.text(max_size=30) | st.just("pkg:npm/%40a/b@1"),
            "cpe": st.text(max_size=30) | st.just("cpe:/a:x:y:1"),
            "version": json_values,
            "components": st.lists(json_values, max_size=2),
        },
    ),
    max_size=4,
)


def refuses_cleanly(data: bytes) -> None:
    with contextlib.suppress(InvalidInputError):  # PayloadTooLargeError is one
        parse_sbom(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_invalid_input(data: bytes) -> None:
    refuses_cleanly(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers, st.dictionaries(st.text(max_size=12), json_values, max_size=6), components)
def test_arbitrary_json_only_raises_invalid_input(
    header: dict[str, Any], body: dict[str, Any], comps: list[dict[str, Any]]
) -> None:
    refuses_cleanly(json.dumps({**body, **header}).encode())
    refuses_cleanly(json.dumps({**header, "components": comps}).encode())
    refuses_cleanly(json.dumps({**header, "packages": body, "creationInfo": body}).encode())
