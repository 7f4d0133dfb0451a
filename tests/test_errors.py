"""The one error tree: every exception class in ``fleetward.errors``, each with
its own stable code, and the API's problem ``type`` made from that code."""

from __future__ import annotations

import ast
import builtins
import inspect
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleetward import errors
from fleetward.api import problems
from fleetward.errors import FleetwardError

SRC = Path(errors.__file__).parent
TREE = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, FleetwardError) and cls.__module__ == errors.__name__
]


def _instance(cls: type[FleetwardError]) -> FleetwardError:
    if cls is errors.ServerRefusedError:
        return cls("no", status=409)
    return cls("no")


def test_every_class_of_the_tree_has_its_own_code_and_no_two_share_one() -> None:
    assert len(TREE) >= 20
    for cls in TREE:
        assert "code" in vars(cls), f"{cls.__name__} inherits its parent's code"
        assert cls.code == cls.code.lower() and " " not in cls.code
    codes = [cls.code for cls in TREE]
    assert len(set(codes)) == len(codes)
    assert errors.codes() == {cls.code: cls for cls in TREE}
    # The codes the API layer adds collide with none of them.
    assert problems.INVALID_REQUEST not in codes
    assert not [c for c in codes if c.startswith("http-")]


def test_a_second_class_with_a_taken_code_is_refused() -> None:
    with pytest.raises(TypeError, match="not-found"):
        type("Another", (errors.NotFoundError,), {"code": "not-found"})


@pytest.mark.parametrize("cls", TREE, ids=lambda c: c.__name__)
def test_the_problem_type_is_made_from_the_code(cls: type[FleetwardError]) -> None:
    body = problems.as_dict(_instance(cls))
    assert body["type"] == f"urn:fleetward:problem:{cls.code}"
    assert body["status"] == _instance(cls).status


def test_the_api_answers_with_the_code_of_the_raised_class(
    client: TestClient, admin_token: str
) -> None:
    h = {"Authorization": f"Bearer {admin_token}"}
    answers = {
        "not-found": client.get("/api/v1/devices/nobody", headers=h),
        "unauthenticated": client.get("/api/v1/devices/nobody"),
        "invalid-request": client.post("/api/v1/devices/x/certificates", json={}, headers=h),
        "http-404": client.get("/no/such/route"),
    }
    for code, resp in answers.items():
        assert resp.headers["content-type"] == problems.PROBLEM_JSON, code
        assert resp.json()["type"] == problems.TYPE_PREFIX + code, resp.text


def _exception_names() -> set[str]:
    names = {n for n, v in vars(builtins).items() if isinstance(v, type)}
    names = {n for n in names if issubclass(getattr(builtins, n), BaseException)}
    return names | {cls.__name__ for cls in TREE}


def test_no_exception_class_is_defined_outside_the_tree() -> None:
    known = _exception_names()
    found: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = {
                b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases
            }
            if bases & known or node.name.endswith(("Error", "Exception")):
                found.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}")
    assert found == [], "exception classes belong in fleetward/errors.py"


def test_moved_classes_are_still_importable_where_they_were() -> None:
    from fleetward.agent.client import ServerRefusedError
    from fleetward.agent.ota import UpdateRefusedError
    from fleetward.comms.commands import BrokerUnavailableError
    from fleetward.comms.plugin import PluginBuildError
    from fleetward.identity.issuance import DuplicateEnrollmentError, UnattestedKeyError
    from fleetward.provisioning.attestation import NonceError
    from fleetward.provisioning.batch import OutsideBatchError
    from fleetward.sim.enroll import SimulationError

    assert ServerRefusedError is errors.ServerRefusedError
    assert UpdateRefusedError is errors.UpdateRefusedError
    assert BrokerUnavailableError is errors.BrokerUnavailableError
    assert PluginBuildError is errors.PluginBuildError
    assert DuplicateEnrollmentError is errors.DuplicateEnrollmentError
    assert UnattestedKeyError is errors.UnattestedKeyError
    assert NonceError is errors.NonceError
    assert OutsideBatchError is errors.OutsideBatchError
    assert SimulationError is errors.SimulationError
