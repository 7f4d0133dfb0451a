"""The playbook language: parsing, binding and the pure run rules."""

from __future__ import annotations

import pytest

from fleetward.errors import InvalidInputError, PayloadTooLargeError
from fleetward.response import playbook as pb
from fleetward.response.standard import STANDARD

GOOD = """
name: revoke-batch
params: {batch: null, reason: keyCompromise}
cohort: {batch: "{batch}"}
steps:
  - {action: quarantine}
  - {action: revoke, reason: "{reason}"}
  - {action: webhook, url: "https://hooks.example/{batch}"}
"""


def test_standard_playbooks_parse_and_name_themselves() -> None:
    for name, source in STANDARD.items():
        assert pb.parse(source).name == name
    assert set(STANDARD) >= {
        "emergency-ota", "mass-credential-revocation", "cohort-quarantine", "compromised-factory",
    }  # fmt: skip


def test_bind_substitutes_whole_values_and_text() -> None:
    spec = pb.parse(GOOD)
    cohort, steps = pb.bind(spec, {"batch": 7})
    assert cohort.batch == 7 and cohort.describe() == "batch 7"
    assert [s.action for s in steps] == ["quarantine", "revoke", "webhook"]
    assert steps[1].args["reason"] == "keyCompromise"
    assert steps[2].args["url"] == "https://hooks.example/7"
    assert pb.approvals_needed(spec) == 1  # revoke is destructive


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("- a list", "must be a mapping"),
        ("name: x\ncohort: {all: true}\nsteps: [{action: format-disk}]", "action must be one of"),
        ("name: x\ncohort: {}\nsteps: [{action: quarantine}]", "cohort must be a mapping"),
        ("name: x\ncohort: {everyone: true}\nsteps: [{action: quarantine}]", "unknown selector"),
        ("name: x\ncohort: {all: true}\nsteps: []", "non-empty list"),
        ("name: Bad Name\ncohort: {all: true}\nsteps: [{action: quarantine}]", "name must be"),
        ("name: x\ncohort: {batch: '{b}'}\nsteps: [{action: quarantine}]", "not declared"),
        ("name: x\ncohort: {all: true}\nsteps: [{action: revoke, force: yes}]", "unknown argument"),
        ("name: x\ncohort: {all: true}\napprovals: -1\nsteps: [{action: quarantine}]", ">= 0"),
        ("name: x\ncohort: {all: yes-please}\nsteps: [{action: quarantine}]", "true or false"),
        ("name: x\ncohort: {all: true}\nsteps: [{action: webhook, url: 'file:///etc'}]", "http(s)"),
        ("name: x\ncohort: {all: true}\nsteps: [{action: emergency-release, release: v}]", "id"),
        ("name: x\ncohort: {batch: abc}\nsteps: [{action: quarantine}]", "batch must be"),
        ("name: x\ncohort: {batch: 7.9}\nsteps: [{action: quarantine}]", "whole number"),
        ("name: x\ncohort: {batch: true}\nsteps: [{action: quarantine}]", "whole number"),
        ("name: x\ncohort: {batch: 2024-01-01}\nsteps: [{action: quarantine}]", "is a date"),
        ("name: x\ncohort: {all: true}\nsteps: [{action: quarantine, reason: !!binary aGk=}]",
         "is a bytes"),
        ("name: x\ncohort: &a {all: true}\nsteps: [{action: quarantine}]", "aliases"),
        ("name: [x", "not valid YAML"),
    ],
)  # fmt: skip
def test_malformed_playbooks_are_refused_with_the_reason(source: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pb.parse(source)


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    with pytest.raises(InvalidInputError, match="aliases"):
        pb.parse(bomb + "name: x\ncohort: {all: true}\nsteps: [{action: quarantine}]")


def test_oversized_playbook_is_refused() -> None:
    with pytest.raises(PayloadTooLargeError):
        pb.parse("name: x\n# " + "y" * pb.MAX_SOURCE_BYTES)


def test_unknown_and_missing_parameters_are_refused() -> None:
    spec = pb.parse(GOOD)
    with pytest.raises(InvalidInputError, match="required"):
        pb.bind(spec, {})
    with pytest.raises(InvalidInputError, match="unknown parameter"):
        pb.bind(spec, {"batch": 1, "tenant": "other"})


def test_emergency_release_needs_two_approvals_whatever_the_playbook_says() -> None:
    spec = pb.parse("name: x\ncohort: {all: true}\napprovals: 0\n"
                    "steps: [{action: emergency-release, release: 3}]")  # fmt: skip
    assert pb.approvals_needed(spec) == 2
    quarantine = pb.parse("name: q\ncohort: {all: true}\nsteps: [{action: quarantine}]")
    assert pb.approvals_needed(quarantine) == 0


def test_confirmation_threshold() -> None:
    check = pb.check_confirmation
    with pytest.raises(InvalidInputError, match="matches no device"):
        check(size=0, population=10, confirm_above=100, confirm=None, what="x")
    with pytest.raises(InvalidInputError, match="confirm=150"):
        check(size=150, population=1000, confirm_above=100, confirm=None, what="x")
    check(size=150, population=1000, confirm_above=100, confirm=150, what="x")
    with pytest.raises(InvalidInputError, match="every device in scope"):
        check(size=10, population=10, confirm_above=100, confirm=None, what="x")
    with pytest.raises(InvalidInputError, match="has 10 devices"):
        check(size=10, population=10, confirm_above=100, confirm=9, what="x")
    check(size=1, population=1, confirm_above=100, confirm=None, what="x")  # one device is no slip
    check(size=5, population=10, confirm_above=100, confirm=None, what="x")
