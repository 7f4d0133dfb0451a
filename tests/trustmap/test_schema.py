"""The trust map schema: the example loads, bad input names the bad node, the
published JSON Schema is the models', and contradictions are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from fleetward.errors import InvalidInputError, PayloadTooLargeError
from fleetward.trustmap import json_schema, load
from fleetward.trustmap.schema import MAX_MAP_BYTES

DOCS = Path(__file__).resolve().parents[2] / "docs"
EXAMPLE = (DOCS / "trustmap.example.yaml").read_text()


def doc() -> dict[str, Any]:
    return dict(yaml.safe_load(EXAMPLE))


def refused(d: dict[str, Any]) -> str:
    with pytest.raises(InvalidInputError) as exc:
        load(yaml.safe_dump(d))
    return str(exc.value.detail)


def test_the_example_map_loads_and_validates_against_the_published_schema() -> None:
    m = load(EXAMPLE)
    assert m.product == "gateway"
    assert m.identity.environments["production"].key_origin == "hardware-attested"
    jsonschema.validate(
        yaml.safe_load(EXAMPLE), json.loads((DOCS / "trustmap.schema.json").read_text())
    )


def test_the_published_schema_is_the_models() -> None:
    published = json.loads((DOCS / "trustmap.schema.json").read_text())
    assert published == json.loads(json.dumps(json_schema())), (
        "docs/trustmap.schema.json is stale: regenerate it from fleetward.trustmap.json_schema()"
    )


def test_an_unknown_key_is_refused_with_its_path() -> None:
    d = doc()
    d["identity"]["environments"]["production"]["key_orign"] = "any"
    assert "identity.environments.production.key_orign: Extra inputs are not permitted" in refused(
        d
    )
    d = doc()
    d["colour"] = "blue"
    assert "colour: Extra inputs are not permitted" in refused(d)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["code"]["tuf_root"].update(threshold=4),
            "threshold 4 is more than the 3 keys",
        ),
        (
            lambda d: d["cloud"]["listeners"]["production"].update(trusts=["production", "test"]),
            "listeners.production trusts test",
        ),
        (
            lambda d: d["detection"]["responses"].update({"device-silent": "quarantine-device"}),
            "responses.device-silent: no such detector is declared on",
        ),
        (
            lambda d: d["factories"].append({"name": "line-2", "environments": ["drill"]}),
            "factories[1] (line-2): environment drill has no identity",
        ),
        (
            lambda d: d["boundaries"].append({"name": "dmz", "contains": ["broker"]}),
            "broker is in both cloud and dmz",
        ),
        (
            lambda d: d["updates"].update(first_wave_max_percent=100),
            "updates.first_wave_max_percent",
        ),
        (lambda d: d["detection"].update(detectors=["telepathy"]), "detection.detectors[0]"),
        (
            lambda d: d["flows"].append({**d["flows"][0], "target": "satellite"}),
            "flows[5].target",
        ),
        (lambda d: d.update(product="Gateway!"), "product: String should match pattern"),
    ],
)
def test_a_contradiction_or_a_bad_reference_is_refused_with_its_path(
    change: Any, message: str
) -> None:
    d = doc()
    change(d)
    assert message in refused(d)


@pytest.mark.parametrize(
    "text",
    ["", "[1, 2]", "product: [", "a: !!python/object:os.system {}", "x" * (MAX_MAP_BYTES + 1)],
)
def test_what_is_not_a_map_is_refused(text: str) -> None:
    with pytest.raises((InvalidInputError, PayloadTooLargeError)):
        load(text)


def test_the_schema_names_the_detectors_and_responses_detection_runs() -> None:
    """The schema is pure and cannot import detection: its lists are held equal here."""
    from fleetward import detection
    from fleetward.trustmap.schema import DETECTORS, RESPONSES

    assert detection.KINDS == DETECTORS
    assert detection.ACTIONS == RESPONSES
