"""The threat model of a sample map: a snapshot, the rules it follows, and its
data-flow diagram rendered by Graphviz."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml

from fleetward.trustmap import load, model, to_dot, to_json, to_markdown
from fleetward.trustmap.threats import CONTROLS, HIGH

HERE = Path(__file__).resolve().parent
EXAMPLE = (HERE.parents[1] / "docs" / "trustmap.example.yaml").read_text()
SNAPSHOT = HERE / "snapshots" / "gateway.threats.json"


def test_the_threat_model_of_the_example_matches_its_snapshot() -> None:
    m = load(EXAMPLE)
    tm = model(m, confirmed=[c for c, declared in model(m).controls.items() if declared])
    got = to_json(tm)
    if os.environ.get("FLEETWARD_UPDATE_SNAPSHOTS") == "1":  # reviewed by hand, then committed
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(got, indent=2) + "\n")
    assert got == json.loads(SNAPSHOT.read_text())


def test_only_declared_and_confirmed_controls_mitigate() -> None:
    m = load(EXAMPLE)
    unchecked = model(m)
    assert all(t.mitigations == () and t.residual == t.score for t in unchecked.threats)
    declared = [c for c, d in unchecked.controls.items() if d]
    checked = model(m, confirmed=declared)
    credential = next(t for t in checked.threats if t.id == "TM-01")
    assert "hardware-device-keys" in credential.mitigations
    assert credential.residual < credential.score
    # A control the checks could not confirm mitigates nothing.
    half = model(m, confirmed=[c for c in declared if c != "hardware-device-keys"])
    credential = next(t for t in half.threats if t.id == "TM-01")
    assert "hardware-device-keys" in credential.unconfirmed
    assert credential.residual == 4 * credential.impact - 1 * credential.impact  # authz only


def test_weaker_maps_leave_the_named_threats_residual_high() -> None:
    d = yaml.safe_load(EXAMPLE)
    d["identity"]["environments"]["production"]["key_origin"] = "any"
    d["code"]["tuf_root"].update(threshold=1, storage="online")
    d["code"]["targets_threshold"] = 1
    d["code"]["boot_stages_measured"] = ["application"]
    d["cloud"]["policy_roles"][0]["subscribe"] = ["fw/{tenant}/+/cmd/#"]
    weak = load(yaml.safe_dump(d))
    tm = model(weak, confirmed=list(CONTROLS))
    residual = {t.id: t for t in tm.threats}
    for tid in ("TM-01", "TM-03", "TM-05", "TM-06"):  # credential theft, supply chain,
        assert residual[tid].high, residual[tid]  # commands, exfiltration
    assert residual["TM-01"].missing == ("hardware-device-keys",)
    ranks = [(t.residual, t.score) for t in tm.threats]
    assert ranks == sorted(ranks, reverse=True)
    assert tm.threats[0].residual >= HIGH


def test_the_markdown_leads_with_residual_high_threats() -> None:
    text = to_markdown(model(load(EXAMPLE)))
    assert text.startswith("# Threat model: gateway")
    assert "Controls were not checked against the live system" in text
    first_row = next(
        line for line in text.splitlines() if line.startswith("| TM-") or line.startswith("| FL-")
    )
    assert "**" in first_row  # the first row is a residual high threat


def test_the_data_flow_diagram_renders_with_graphviz(tmp_path: Path) -> None:
    dot = shutil.which("dot")
    assert dot is not None, "Graphviz is installed by scripts/bootstrap"
    source = to_dot(load(EXAMPLE))
    assert 'subgraph cluster_2 {\n    label="cloud"' in source
    assert (
        '"device-plane" -> "database" [label="certificates and verdicts (SQL)", style=dashed];'
        in source
    )
    out = subprocess.run([dot, "-Tsvg"], input=source.encode(), capture_output=True, check=True)
    svg = out.stdout.decode()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for element in ("device", "broker", "ota-repository", "operators"):
        assert f">{element.replace('-', '&#45;')}</text>" in svg  # Graphviz escapes "-"
