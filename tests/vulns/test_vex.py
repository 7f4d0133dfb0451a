"""CycloneDX VEX export: schema-valid, deterministic, states round-trip."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest
from cyclonedx.model.bom import Bom
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from fleetward.errors import InvalidInputError, PayloadTooLargeError
from fleetward.vulns import vex as vex_module
from fleetward.vulns.records import ANALYSIS_STATES
from fleetward.vulns.vex import VexEntry, vex_document

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
SERIAL = uuid.UUID("3e671687-395b-41f5-a30f-a58921a69b79")
OPENSSL = "pkg:deb/debian/openssl@3.0.11-1~deb12u2?arch=arm64"


def _entry(**over: Any) -> VexEntry:
    base: dict[str, Any] = {
        "advisory_id": "CVE-2024-0727",
        "source_name": "NVD",
        "source_url": "https://nvd.nist.gov/vuln/detail/CVE-2024-0727",
        "component_name": "openssl",
        "component_version": "3.0.11-1~deb12u2",
        "component_purl": OPENSSL,
        "component_ref": "openssl-arm64",
        "state": "exploitable",
        "first_issued": NOW - dt.timedelta(days=3),
        "last_updated": NOW,
        "cvss_score": 5.5,
        "cvss_vector": "CVSS:3.1/AV:L/AC:L/PR:N/UI:R/S:U/C:N/I:N/A:H",
        "severity": "medium",
        "detail": "Reached through the PKCS12 import of the provisioning tool.",
    }
    base.update(over)
    return VexEntry(**base)


def _all_states() -> list[VexEntry]:
    out = []
    for i, state in enumerate(ANALYSIS_STATES):
        out.append(
            _entry(
                advisory_id=f"CVE-2026-{1000 + i}",
                state=state,
                justification="code_not_reachable" if state == "not_affected" else None,
            )
        )
    out.append(
        _entry(
            advisory_id="GHSA-9hjg-9r4m-mvj7",
            source_name="OSV",
            source_url=None,
            component_name="requests",
            component_version="2.31.0",
            component_purl="pkg:pypi/requests@2.31.0",
            component_ref=None,
            state="in_triage",
            cvss_score=None,
            cvss_vector=None,
            severity="unknown",
            detail="",
        )
    )
    return out


@pytest.mark.parametrize("schema", [SchemaVersion.V1_5, SchemaVersion.V1_6])
def test_vex_validates_against_the_cyclonedx_schema(schema: SchemaVersion) -> None:
    out = vex_document(
        product="Acme Gateway",
        version="2.4.0",
        entries=_all_states(),
        now=NOW,
        serial=SERIAL,
        schema=schema,
    )
    assert JsonStrictValidator(schema).validate_str(out.decode()) is None
    doc = json.loads(out)
    assert doc["specVersion"] == schema.to_version()


def test_states_and_justifications_round_trip() -> None:
    entries = _all_states()
    out = vex_document(
        product="Acme Gateway", version="2.4.0", entries=entries, now=NOW, serial=SERIAL
    )
    doc = json.loads(out)
    got = {v["id"]: v["analysis"] for v in doc["vulnerabilities"]}
    for e in entries:
        assert got[e.advisory_id]["state"] == e.state
        assert got[e.advisory_id].get("justification") == e.justification
    # The library reads it back with the same states.
    bom = Bom.from_json(doc)  # type: ignore[attr-defined]
    states = sorted((v.id, v.analysis.state.value) for v in bom.vulnerabilities)
    assert states == sorted((e.advisory_id, e.state) for e in entries)


def test_exact_document_for_one_entry() -> None:
    out = vex_document(
        product="Acme Gateway",
        version="2.4.0",
        entries=[_entry(state="not_affected", justification="protected_at_perimeter")],
        now=NOW,
        serial=SERIAL,
    )
    assert json.loads(out) == {
        "$schema": "http://cyclonedx.org/schema/bom-1.5.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": "urn:uuid:3e671687-395b-41f5-a30f-a58921a69b79",
        "version": 1,
        "metadata": {
            "timestamp": "2026-12-07T12:00:00+00:00",
            "component": {
                "bom-ref": "product",
                "name": "Acme Gateway",
                "type": "firmware",
                "version": "2.4.0",
            },
        },
        "components": [
            {
                "bom-ref": "openssl-arm64",
                "name": "openssl",
                "purl": "pkg:deb/debian/openssl@3.0.11-1~deb12u2?arch=arm64",
                "type": "library",
                "version": "3.0.11-1~deb12u2",
            }
        ],
        "dependencies": [
            {"ref": "openssl-arm64"},
            {"ref": "product", "dependsOn": ["openssl-arm64"]},
        ],
        "vulnerabilities": [
            {
                "bom-ref": "vex:CVE-2024-0727:openssl-arm64",
                "id": "CVE-2024-0727",
                "source": {
                    "name": "NVD",
                    "url": "https://nvd.nist.gov/vuln/detail/CVE-2024-0727",
                },
                "ratings": [
                    {
                        "method": "CVSSv31",
                        "score": 5.5,
                        "severity": "medium",
                        # The library writes the vector without its CVSS:3.1/ prefix.
                        "vector": "AV:L/AC:L/PR:N/UI:R/S:U/C:N/I:N/A:H",
                    }
                ],
                "analysis": {
                    "state": "not_affected",
                    "justification": "protected_at_perimeter",
                    "detail": "Reached through the PKCS12 import of the provisioning tool.",
                    "firstIssued": "2026-12-04T12:00:00+00:00",
                    "lastUpdated": "2026-12-07T12:00:00+00:00",
                },
                "affects": [{"ref": "openssl-arm64"}],
            }
        ],
    }


def test_output_is_deterministic_and_ref_falls_back_to_the_purl() -> None:
    entries = _all_states()
    a = vex_document(product="p", version="1", entries=entries, now=NOW, serial=SERIAL)
    b = vex_document(product="p", version="1", entries=entries[::-1], now=NOW, serial=SERIAL)
    assert a == b
    refs = {c["bom-ref"] for c in json.loads(a)["components"]}
    assert refs == {"openssl-arm64", "pkg:pypi/requests@2.31.0"}


def test_not_affected_requires_a_justification() -> None:
    with pytest.raises(ValueError, match="justification"):
        _entry(state="not_affected")
    with pytest.raises(ValueError, match="justification"):
        _entry(state="exploitable", justification="code_not_present")
    with pytest.raises(ValueError):
        _entry(state="not_affected", justification="trust_me")


@pytest.mark.parametrize(
    "over",
    [
        {"state": "fixed"},
        {"severity": "urgent"},
        {"cvss_score": 11.0},
        {"component_purl": "not a purl"},
        {"first_issued": dt.datetime(2026, 1, 1)},
        {"last_updated": NOW - dt.timedelta(days=10)},
        {"detail": "x" * 8001},
        {"advisory_id": ""},
    ],
)
def test_bad_entries_are_refused(over: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _entry(**over)


def test_document_level_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    e = _entry()
    with pytest.raises(InvalidInputError, match="twice"):
        vex_document(product="p", version="1", entries=[e, e], now=NOW, serial=SERIAL)
    other = _entry(advisory_id="CVE-2026-1", component_name="libssl")
    with pytest.raises(InvalidInputError, match="two different components"):
        vex_document(product="p", version="1", entries=[e, other], now=NOW, serial=SERIAL)
    with pytest.raises(InvalidInputError, match="reserved"):
        vex_document(
            product="p",
            version="1",
            entries=[_entry(component_ref="product")],
            now=NOW,
            serial=SERIAL,
        )
    with pytest.raises(InvalidInputError):
        vex_document(product="", version="1", entries=[e], now=NOW, serial=SERIAL)
    with pytest.raises(InvalidInputError):
        vex_document(
            product="p", version="1", entries=[e], now=NOW, serial=SERIAL, schema=SchemaVersion.V1_4
        )
    monkeypatch.setattr(vex_module, "MAX_ENTRIES", 1)
    with pytest.raises(PayloadTooLargeError):
        vex_document(product="p", version="1", entries=[e, other], now=NOW, serial=SERIAL)
