"""``fleetward trustmap init``: a trust map drafted from the live installation holds.

The pure part (``trustmap.draft``) is held to its property over generated
live facts: the draft loads, and ``check`` of it reports exactly the drifts
:func:`~fleetward.trustmap.draft.gaps` announces (none without a gap). The
command runs against the test installation (``fleetward init``: file keys,
an online root CA, unattested keys allowed in production), fresh and with a
production device, a campaign, a factory and a custom policy role; each
draft is then checked by ``fleetward trustmap check`` with no drift, until
the installation changes under it.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fleetward.cli.main import app
from fleetward.errors import ConflictError, FleetwardError, InvalidInputError, NotFoundError
from fleetward.runtime.context import AppContext
from fleetward.trustmap import LiveFacts, LiveRole, check, load
from fleetward.trustmap._live import BOOT_STAGES
from fleetward.trustmap.draft import from_live, gaps, to_yaml, unknowns, weak_spots
from fleetward.trustmap.schema import DETECTORS, ENVIRONMENTS, RESPONSES
from tests.ota.helpers import measurements
from tests.trustmap.test_live import DEVICE_ROLE, PRODUCT, SBOM, auth, enroll, token

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


# -- the pure draft ---------------------------------------------------------

ENVS = st.sampled_from(ENVIRONMENTS)
# Names a map can hold, and ones it cannot (upper case: factories allow it).
NAMES = st.sampled_from(["line-1", "line-2", "Line-3"])
LONG = "fw/{tenant}/" + "/".join(["abcdefghij" * 6] * 5)  # over the map's 256 characters
TEMPLATES = st.sampled_from(
    ["fw/{tenant}/{device}/telemetry/#", "fw/{tenant}/+/state", "fw/{tenant}/#",
     "fw/{tenant}/dev-1/cmd", "fw/{tenant}/{device}", LONG]
)  # fmt: skip
ROLES = st.builds(
    LiveRole,
    publish=st.lists(TEMPLATES, max_size=3).map(tuple),
    subscribe=st.lists(TEMPLATES, max_size=2).map(tuple),
    commands=st.lists(st.sampled_from(["ping", "reboot", "Reboot"]), max_size=2).map(tuple),
)
CAMPAIGNS = st.sampled_from(["campaign-1", "campaign-2", "campaign-3"])
WAVES = st.floats(min_value=0.5, max_value=100) | st.integers(1, 100) | st.just(100)


def prose(text: str) -> str:
    """The header of a drafted map as one line of words (its notes are wrapped)."""
    header = text.split("\nversion: 1\n")[0]
    return " ".join(line.lstrip("#").strip() for line in header.splitlines())


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


LIVE = st.builds(
    LiveFacts,
    device_key_origins=maybe(st.dictionaries(
        st.tuples(ENVS, st.sampled_from(["hardware-attested", "software", "unknown"])),
        st.integers(0, 5), max_size=4,
    )),
    ca_key_backends=maybe(st.dictionaries(ENVS, st.sampled_from(["file", "pkcs11"]))),
    root_ca=maybe(st.sampled_from(["offline", "online"])),
    tuf_root_threshold=maybe(st.integers(1, 64)),
    tuf_root_keys=maybe(st.integers(1, 64)),
    tuf_root_storage=maybe(st.sampled_from(["offline", "online"])),
    release_thresholds=maybe(st.dictionaries(st.sampled_from(["gw", "other"]), st.integers(1, 64))),
    boot_stages_measured=maybe(st.frozensets(st.sampled_from(BOOT_STAGES))),
    campaign_first_wave_percent=maybe(st.dictionaries(CAMPAIGNS, WAVES)),
    campaign_require_attestation=maybe(st.dictionaries(CAMPAIGNS, st.booleans())),
    detectors_enabled=maybe(st.frozensets(st.sampled_from(DETECTORS))),
    detector_responses=st.dictionaries(st.sampled_from(DETECTORS), st.sampled_from(RESPONSES)),
    policy_roles=maybe(st.dictionaries(st.sampled_from(["device", "sensor", "Ops"]), ROLES,
                                       max_size=3)),
    listener_trust=maybe(st.dictionaries(ENVS, st.frozensets(ENVS, min_size=1))),
    service_identities=maybe(st.frozensets(st.sampled_from(["ingest", "ota", "Commands"]))),
    factory_environments=maybe(st.dictionaries(NAMES, st.frozensets(ENVS), max_size=3)),
    factory_unbound_tokens=st.dictionaries(
        NAMES, st.lists(st.sampled_from(["tok-1", "tok-2"]), max_size=2).map(tuple)
    ),
    factory_open_batches=st.dictionaries(NAMES, st.integers(0, 3)),
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(live=LIVE)
def test_a_draft_loads_and_checks_with_exactly_its_announced_gaps(live: LiveFacts) -> None:
    doc = from_live(live, product="gw")
    text = to_yaml(doc, tenant="default", now=NOW, live=live)
    m = load(text)
    assert m == load(json.dumps(doc))  # the header is only comments
    announced = {g.drift for g in gaps(live, product="gw")}
    found = {d.kind for d in check(m, live).drifts}
    assert found == announced
    if not announced:
        assert check(m, live).drifts == ()


def test_a_draft_records_what_is_and_calls_out_weak_spots() -> None:
    live = LiveFacts(
        device_key_origins={("production", "software"): 3, ("test", "hardware-attested"): 1},
        ca_key_backends={"production": "file", "test": "file"},
        root_ca="online",
        tuf_root_threshold=1,
        tuf_root_keys=1,
        tuf_root_storage="online",
        release_thresholds={"gw": 1},
        boot_stages_measured=frozenset({"kernel"}),
        campaign_first_wave_percent={"campaign-1": 5, "campaign-2": 40},
        campaign_require_attestation={"campaign-1": True, "campaign-2": False},
        detectors_enabled=frozenset({"boot-integrity", "authz-failures"}),
        detector_responses={"authz-failures": "quarantine-device", "firmware-drift": "none"},
        policy_roles={"device": LiveRole(publish=("fw/{tenant}/{device}/telemetry/#",))},
        listener_trust={"production": frozenset({"production"})},
        service_identities=frozenset({"ingest"}),
        factory_environments={"line-1": frozenset({"production", "test"})},
    )
    doc = from_live(live, product="gw")
    envs = doc["identity"]["environments"]
    assert envs["production"] == {"issuing_ca_key": "file", "key_origin": "any"}
    assert envs["test"]["key_origin"] == "hardware-attested"
    assert doc["code"]["tuf_root"] == {"threshold": 1, "keys": 1, "storage": "online"}
    assert doc["code"]["boot_stages_measured"] == ["kernel"]
    assert doc["code"]["attestation_required_for_updates"] is False
    assert doc["updates"]["first_wave_max_percent"] == 40  # the loosest live campaign
    assert doc["detection"] == {
        "detectors": ["boot-integrity", "authz-failures"],
        "responses": {"authz-failures": "quarantine-device"},
    }
    assert doc["factories"] == [{"name": "line-1", "environments": ["test", "production"]}]
    weak = weak_spots(doc)
    assert "production certifies software keys (key_origin: any)" in weak
    assert any("root CA" in w for w in weak) and any("TUF root keys" in w for w in weak)
    assert any("bootloader, application" in w for w in weak)
    header = prose(to_yaml(doc, tenant="acme", now=NOW, live=live))
    assert "tenant acme at 2026-12-07T12:00:00+00:00" in header
    assert "production certifies software keys" in header and "DRAFT" in header
    assert check(load(to_yaml(doc, tenant="acme", now=NOW)), live).drifts == ()


def test_unknown_facts_get_the_strict_answer_and_are_listed() -> None:
    live = LiveFacts()
    doc = from_live(live, product="gw")
    assert doc["identity"] == {
        "root_ca": "offline",
        "environments": {
            "production": {"issuing_ca_key": "file", "key_origin": "hardware-attested"}
        },
    }
    assert doc["code"]["boot_stages_measured"] == list(BOOT_STAGES)
    assert doc["detection"]["detectors"] == list(DETECTORS)
    notes = unknowns(live)
    assert any(n.startswith("unknown TUF root") for n in notes)
    assert check(load(to_yaml(doc, tenant="t", now=NOW, live=live)), live).checked == ()


def test_gaps_are_stated_safely_and_announced() -> None:
    live = LiveFacts(
        listener_trust={"production": frozenset({"production", "test"})},
        factory_environments={"line-1": frozenset({"production"})},
        factory_unbound_tokens={"line-1": ("tok-9",)},
        release_thresholds={"other": 2},
        campaign_first_wave_percent={"campaign-7": 100},
    )
    doc = from_live(live, product="gw")
    assert doc["cloud"]["listeners"] == {"production": {"trusts": ["production"]}}
    assert doc["updates"]["first_wave_max_percent"] == 5
    found = {d.kind: d for d in check(load(json.dumps(doc)), live).drifts}
    assert set(found) == {g.drift for g in gaps(live, product="gw")} == {
        "listener-trusts-other-environment", "factory-token-unbound", "release-threshold",
        "first-wave-too-large",
    }  # fmt: skip
    text = to_yaml(doc, tenant="t", now=NOW, live=live)
    assert "token(s) tok-9 can enroll outside its batches [factory-token-unbound]" in prose(text)


def test_tenant_written_names_cannot_inject_yaml_into_the_draft() -> None:
    evil = "line-1\nidentity: {root_ca: offline}\n# "
    live = LiveFacts(
        factory_environments={evil: frozenset({"test"})},
        factory_unbound_tokens={evil: ("tok\u2028x",)},
        service_identities=frozenset({"ingest"}),
    )
    doc = from_live(live, product="gw")
    assert doc["factories"] == []  # a name a map cannot hold is not declared
    text = to_yaml(doc, tenant="t\nproduct: other", now=NOW, live=live)
    header = text.split("\nversion: 1\n")[0]
    assert all(line.startswith("#") for line in header.splitlines())
    assert yaml.safe_load(text) == doc and load(text).product == "gw"
    assert "factory-undeclared" in header and "factory-token-unbound" in header


def test_a_product_name_a_map_cannot_hold_is_refused() -> None:
    for bad in ("", "GW", "-gw", "g w", "x" * 65):
        with pytest.raises(InvalidInputError, match="trust map names its product"):
            from_live(LiveFacts(), product=bad)


# -- the command, against the live installation ------------------------------


def run(ctx: AppContext, *args: str) -> tuple[int, str, BaseException | None]:
    out = CliRunner().invoke(app, ["--home", str(ctx.settings.home), "trustmap", *args])
    if out.exception is not None and not isinstance(out.exception, SystemExit):
        assert isinstance(out.exception, FleetwardError), out.exception
        return 1, str(out.exception.detail), out.exception
    return out.exit_code, out.output, None


def drifts(ctx: AppContext, path: Path) -> tuple[int, list[dict[str, Any]]]:
    code, output, _ = run(ctx, "check", str(path), "--json")
    return code, json.loads(output)["drifts"]


def register(client: TestClient, ctx: AppContext) -> str:
    """Product ``gw`` in the TUF repository (threshold 1); the release manager's token."""
    rm = token(ctx, "release-manager")
    resp = client.post(f"/api/v1/ota/products/{PRODUCT}", json={"threshold": 1}, headers=auth(rm))
    assert resp.status_code == 201, resp.text
    return rm


def release(client: TestClient, rm: str) -> int:
    image = b"image 1.0.0"
    resp = client.post(
        "/api/v1/releases",
        data={"product": PRODUCT, "version": "1.0.0", "hardware": "board-a",
              "measurements": json.dumps(measurements(image))},
        files={"artifact": ("fw.bin", image, "application/octet-stream"),
               "sbom": ("sbom.json", SBOM, "application/json")},
        headers=auth(rm),
    )  # fmt: skip
    assert resp.status_code == 201, resp.text
    rid = int(resp.json()["id"])
    resp = client.post(f"/api/v1/releases/{rid}/approvals", headers=auth(rm))
    assert resp.status_code == 200 and resp.json()["state"] == "deployable", resp.text
    return rid


def test_init_on_a_fresh_installation_holds_until_a_software_key_reaches_production(
    client: TestClient, ctx: AppContext, admin_token: str, tmp_path: Path
) -> None:
    register(client, ctx)
    path = tmp_path / "gw.yaml"
    code, output, _ = run(ctx, "init", "--product", PRODUCT, "--out", str(path))
    assert (code, output) == (0, "")
    text = path.read_text()
    assert text.startswith("# Trust map of gw: a DRAFT") and "tenant default" in text
    m = load(text)
    # What `fleetward init` holds: file keys, an online root, all on one fresh repository.
    assert m.identity.root_ca == "online"
    production = m.identity.environments["production"]
    assert (production.issuing_ca_key, production.key_origin) == ("file", "hardware-attested")
    assert m.code.tuf_root.storage == "online" and m.code.targets_threshold == 1
    assert [r.name for r in m.cloud.policy_roles] == ["device"]
    assert run(ctx, "validate", str(path))[0] == 0
    assert drifts(ctx, path) == (0, [])
    code, output, _ = run(ctx, "check", str(path))
    assert code == 0 and "0 drift(s)" in output
    # The same draft on stdout.
    code, output, _ = run(ctx, "init", "--product", PRODUCT)
    assert code == 0 and load(output) == m

    # The draft said hardware-attested; a software key enrolled in production is a drift.
    enroll(client, admin_token, "gw-prod-soft", "production")
    code, found = drifts(ctx, path)
    assert code == 1
    assert [(d["kind"], d["subject"], d["objects"]) for d in found] == [
        ("software-keys-in-production", "environment:production", ["gw-prod-soft"])
    ]


def test_init_on_a_used_installation_holds_and_names_its_weak_spots(
    client: TestClient, ctx: AppContext, admin_token: str, tmp_path: Path
) -> None:
    rm = register(client, ctx)
    rid = release(client, rm)
    enroll(client, admin_token, "gw-prod-1", "production")  # a software key (allowed here)
    enroll(client, admin_token, "gw-test-1", "test")
    resp = client.post("/api/v1/campaigns", json={"release_id": rid, "waves": [30, 100]},
                       headers=auth(rm))  # fmt: skip
    assert resp.status_code == 201, resp.text
    resp = client.post("/api/v1/provisioning/factories",
                       json={"name": "line-2", "environment": "production"},
                       headers=auth(admin_token))  # fmt: skip
    assert resp.status_code == 201, resp.text
    sensor = {"publish": ["fw/{tenant}/{device}/readings/+"], "commands": ["calibrate"]}
    document = {"roles": {"device": DEVICE_ROLE, "sensor": sensor}}
    resp = client.put("/api/v1/comms/policy", json={"document": document},
                      headers=auth(token(ctx, "security")))  # fmt: skip
    assert resp.status_code == 201, resp.text

    path = tmp_path / "gw.yaml"
    assert run(ctx, "init", "--product", PRODUCT, "--out", str(path))[0] == 0
    text = path.read_text()
    m = load(text)
    assert m.identity.environments["production"].key_origin == "any"
    assert m.identity.environments["test"].key_origin == "any"
    assert m.updates.first_wave_max_percent == 30
    assert m.code.attestation_required_for_updates is False
    assert m.code.boot_stages_measured == list(BOOT_STAGES)
    assert [(f.name, f.environments) for f in m.factories] == [("line-2", ["production"])]
    roles = {r.name: r for r in m.cloud.policy_roles}
    assert set(roles) == {"device", "sensor"}
    assert (roles["sensor"].publish, roles["sensor"].commands) == (sensor["publish"], ["calibrate"])
    header = prose(text)
    for weak in ("production certifies software keys (key_origin: any)",
                 "campaigns count a device updated without boot attestation",
                 "a first wave may reach 30 % of the fleet"):  # fmt: skip
        assert weak in header
    assert drifts(ctx, path) == (0, [])

    # A role widened after the draft is a drift of the draft.
    sensor["commands"] = ["calibrate", "reboot"]
    wider = {"roles": {"device": DEVICE_ROLE, "sensor": sensor}}
    resp = client.put("/api/v1/comms/policy", json={"document": wider},
                      headers=auth(token(ctx, "security")))  # fmt: skip
    assert resp.status_code == 201, resp.text
    code, found = drifts(ctx, path)
    assert code == 1 and [(d["kind"], d["objects"]) for d in found] == [
        ("policy-role-broader", ["command reboot"])
    ]


def test_init_refuses_to_overwrite_and_unknown_products(
    client: TestClient, ctx: AppContext, tmp_path: Path
) -> None:
    path = tmp_path / "gw.yaml"
    code, output, exc = run(ctx, "init", "--product", PRODUCT, "--out", str(path))
    # No device, release or targets role of gw yet: no such product, and no file.
    assert code == 1 and isinstance(exc, NotFoundError)
    assert output == "no product 'gw' in tenant 'default'" and not path.exists()
    register(client, ctx)
    path.write_text("mine\n")
    code, output, exc = run(ctx, "init", "--product", PRODUCT, "--out", str(path))
    assert code == 1 and isinstance(exc, ConflictError) and "--force" in output
    assert path.read_text() == "mine\n"
    code, output, exc = run(ctx, "init", "--product", PRODUCT, "--out", str(path), "--force")
    assert code == 0 and load(path.read_text()).product == PRODUCT
    code, output, exc = run(ctx, "init", "--product", PRODUCT, "--out", str(tmp_path), "--force")
    assert code == 1 and isinstance(exc, InvalidInputError) and "cannot write" in output
    code, output, exc = run(ctx, "init", "--product", "other", "--tenant", "default")
    assert code == 1 and output == "no product 'other' in tenant 'default'"
    code, output, exc = run(ctx, "init", "--product", "gw", "--tenant", "nobody")
    assert code == 1 and isinstance(exc, NotFoundError)
