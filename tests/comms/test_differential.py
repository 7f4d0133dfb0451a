"""The C evaluator the broker plugin runs must mean what policy.py means.

Hypothesis generates policies, devices and topics; each decision is taken by
:func:`fleetward.comms.policy.decide` and by ``fw_acl.c`` over the table
:func:`fleetward.comms.compile.compile_table` wrote. They must agree.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetward.comms.compile import BrokerDevice, compile_table, mqtt_username
from fleetward.comms.plugin import build_evaluator
from fleetward.comms.policy import Action, Policy, Subject, decide, parse_policy
from fleetward.errors import InvalidInputError

pytestmark = pytest.mark.broker

ACTION_CODES = {"publish": 0, "subscribe": 1, "receive": 2}
WORDS = ["fw", "acme", "globex", "d1", "d2", "cmd", "telemetry", "ota", "p1", "p2", "eu", "us"]
COMMANDS = ["ping", "reboot", "wipe"]
VARS = ["{device}", "{tenant}", "{product}", "{label.region}", "{label.zone}"]


class Evaluator:
    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        lib.fw_table_load.restype = ctypes.c_void_p
        lib.fw_table_load.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        lib.fw_table_free.argtypes = [ctypes.c_void_p]
        lib.fw_check_text.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_char_p,
        ]
        lib.fw_check_text.restype = ctypes.c_int

    def load(self, text: str) -> int:
        raw = text.encode()
        err = ctypes.create_string_buffer(128)
        table = self.lib.fw_table_load(raw, len(raw), err, 128)
        if not table:
            raise ValueError(err.value.decode())
        return int(table)

    def check(self, table: int, username: str, action: Action, topic: str) -> bool:
        code = ACTION_CODES[action]
        return bool(self.lib.fw_check_text(table, username.encode(), code, topic.encode()))

    def free(self, table: int) -> None:
        self.lib.fw_table_free(table)


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Evaluator]:
    path = build_evaluator(Path(tmp_path_factory.mktemp("native")))
    yield Evaluator(ctypes.CDLL(str(path)))


level = st.sampled_from(WORDS + VARS + ["+"])
template = st.builds(
    lambda mid, tail: "/".join(["fw", "{tenant}", *mid, *tail]),
    st.lists(level, min_size=1, max_size=4),
    st.sampled_from([[], ["#"]]),
)
commands = st.lists(st.sampled_from(COMMANDS), max_size=3, unique=True)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    roles: dict[str, Any] = {}
    for i in range(draw(st.integers(1, 3))):
        devices: dict[str, Any] = {}
        if draw(st.booleans()):
            devices["product"] = draw(st.sampled_from(["p1", "p2"]))
        if draw(st.booleans()):
            devices["labels"] = {"region": draw(st.sampled_from(["eu", "us"]))}
        roles[f"r{i}"] = {
            "devices": devices,
            "publish": draw(st.lists(template, min_size=1, max_size=3)),
            "subscribe": draw(st.lists(template, min_size=1, max_size=3)),
            "commands": draw(commands),
            "deny": {
                "publish": draw(st.lists(template, max_size=1)),
                "subscribe": draw(st.lists(template, max_size=1)),
                "commands": draw(st.lists(st.sampled_from(["reboot", "wipe"]), max_size=1)),
            },
        }
    return parse_policy({"roles": roles})


subjects = st.builds(
    Subject,
    tenant=st.just("acme"),
    device_id=st.sampled_from(["d1", "d2"]),
    product=st.sampled_from(["p1", "p2", "p1", "bad/product"]),
    labels=st.sampled_from([{}, {"region": "eu"}, {"region": "us", "zone": "z1"}]),
    quarantined=st.sampled_from([False, False, False, True]),
)
names = st.lists(st.sampled_from([*WORDS, *COMMANDS, "z1", "x", ""]), min_size=0, max_size=4)


def _instantiate(draw: st.DrawFn, levels: tuple[str, ...], subject: Subject) -> list[str]:
    """A topic the template (probably) matches for ``subject``, sometimes bent."""
    values = {
        "{device}": subject.device_id,
        "{tenant}": subject.tenant,
        "{product}": subject.product,
    }
    out: list[str] = []
    for lv in levels:
        if lv == "#":
            out.extend(draw(st.lists(st.sampled_from(WORDS), max_size=2)))
        elif lv == "+":
            out.append(draw(st.sampled_from(WORDS)))
        elif lv.startswith("{label."):
            out.append(subject.labels.get(lv[7:-1], "eu"))
        else:
            out.append(values.get(lv, lv))
    if out and draw(st.integers(0, 3)) == 0:
        out[draw(st.integers(0, len(out) - 1))] = draw(st.sampled_from([*WORDS, "", "globex"]))
    return out


@st.composite
def checks(draw: st.DrawFn, policy: Policy, subject: Subject) -> tuple[Action, str]:
    action: Action = draw(st.sampled_from(["publish", "subscribe", "receive"]))
    roles = [r for r in policy.roles if r.selects(subject)] or list(policy.roles)
    templates = [
        t.levels
        for r in roles
        for t in (
            (*r.publish, *r.deny_publish)
            if action == "publish"
            else (*r.subscribe, *r.deny_subscribe)
        )
    ]
    shape = draw(st.sampled_from(["template", "template", "command", "free"]))
    if shape == "template" and templates:
        levels = _instantiate(draw, draw(st.sampled_from(templates)), subject)
    elif shape == "command":
        device = draw(st.sampled_from([subject.device_id, subject.device_id, "d2"]))
        levels = ["fw", "acme", device, "cmd", draw(st.sampled_from(COMMANDS))]
    else:
        levels = ["fw", "acme", *draw(names)]
    if not levels:
        levels = ["fw"]
    if action == "subscribe":
        levels = [draw(st.sampled_from([lv, "+", lv, lv])) for lv in levels]
        tail = draw(st.integers(0, 5))
        if tail == 0:
            levels.append("#")
        elif tail == 1:
            levels[-1] = "#"
    return action, "/".join(levels)


@settings(max_examples=1000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=policies(), subject=subjects, data=st.data())
def test_c_evaluator_agrees_with_python(
    evaluator: Evaluator, policy: Policy, subject: Subject, data: st.DataObject
) -> None:
    probes = data.draw(st.lists(checks(policy, subject), min_size=1, max_size=12))
    username = mqtt_username(tenant=subject.tenant, environment="test", device_id=subject.device_id)
    text = compile_table(
        policies={"acme": policy},
        devices=[BrokerDevice(subject=subject, username=username, serials=("0a" * 20,))],
        generation=1,
        max_payload=1024,
        service_username="svc",
    )
    table = evaluator.load(text)
    try:
        for action, topic in probes:
            try:
                expected = decide(policy, subject, action, topic).allowed
            except InvalidInputError:
                continue  # Mosquitto refuses malformed topics before any ACL check.
            assert evaluator.check(table, username, action, topic) == expected, (action, topic)
        # An identity the table does not list may do nothing.
        assert not evaluator.check(table, "O=acme,OU=test,CN=ghost", "publish", "fw/acme/ghost")
    finally:
        evaluator.free(table)


def test_two_tenants_in_one_table_stay_apart(evaluator: Evaluator) -> None:
    policy = parse_policy({"roles": {"all": {"publish": ["fw/{tenant}/{device}/#"]}}})
    devices = [
        BrokerDevice(
            Subject("acme", "d1", "p", {}),
            mqtt_username(tenant="acme", environment="test", device_id="d1"),
            ("01" * 20,),
        ),
        BrokerDevice(
            Subject("globex", "d1", "p", {}),
            mqtt_username(tenant="globex", environment="test", device_id="d1"),
            ("02" * 20,),
        ),
    ]
    text = compile_table(
        policies={"acme": policy, "globex": policy},
        devices=devices,
        generation=1,
        max_payload=10,
        service_username="svc",
    )
    table = evaluator.load(text)
    try:
        acme, globex = (d.username for d in devices)
        assert evaluator.check(table, acme, "publish", "fw/acme/d1/x")
        assert not evaluator.check(table, acme, "publish", "fw/globex/d1/x")
        assert evaluator.check(table, globex, "publish", "fw/globex/d1/x")
        assert not evaluator.check(table, globex, "publish", "fw/acme/d1/x")
    finally:
        evaluator.free(table)


HEADER = "fwacl\t2\t1\t1\tsvc\t\n"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "nonsense\n",
        "fwacl\t1\t1\t1\tsvc\n",  # an old format
        HEADER,  # no end line: truncated
        HEADER + "r\tp\tfw/x\nend\n",  # a rule before any role
        HEADER + "D\tu\tt\td\tp\tzz\t\t\nend\n",  # not hex
        HEADER + "D\tu\tt\td\tp\t" + "01" * 20 + "\t7\t\nend\n",  # no role 7
        HEADER + "R\tr\n\nD\tu\tt\td\tp\t" + "01" * 20 + "\t\t\nend\n",  # blank line
        HEADER + "end\nD\tu\tt\td\tp\t" + "01" * 20 + "\t\t\n",  # after the end
    ],
)
def test_malformed_tables_are_rejected(evaluator: Evaluator, text: str) -> None:
    with pytest.raises(ValueError, match="table"):
        evaluator.load(text)


def test_values_with_control_characters_never_reach_the_table() -> None:
    from fleetward.errors import InvalidInputError
    from fleetward.identity.profile import check_device_id

    docs: list[dict[str, object]] = [
        {"roles": {"r": {"commands": ["reboot\n"]}}},
        {"roles": {"r\n": {}}},
        {"roles": {"r": {"publish": ["fw/{tenant}/x\n"]}}},
        {"roles": {"r": {"devices": {"labels": {"a": "b\n"}}}}},
    ]
    for doc in docs:
        with pytest.raises(InvalidInputError):
            parse_policy(doc)
    with pytest.raises(InvalidInputError):
        check_device_id("d1\n")
    text = compile_table(
        policies={},
        devices=[
            BrokerDevice(
                Subject("acme", "d1", "p\nq", {"k": "v\n"}),
                mqtt_username(tenant="acme", environment="test", device_id="d1"),
                ("01" * 20,),
            )
        ],
        generation=1,
        max_payload=10,
        service_username="svc",
    )
    assert "\n\n" not in text and text.endswith("end\n")
    assert "\tp\nq" not in text and "v\n" not in text


def test_many_certificates_per_identity_load(evaluator: Evaluator) -> None:
    certs = tuple(f"{i:040x}" for i in range(600))
    policy = parse_policy({"roles": {"all": {"publish": ["fw/{tenant}/{device}/#"]}}})
    username = mqtt_username(tenant="acme", environment="test", device_id="d1")
    text = compile_table(
        policies={"acme": policy},
        devices=[BrokerDevice(Subject("acme", "d1", "p", {}), username, certs)],
        generation=1,
        max_payload=10,
        service_username="svc",
    )
    table = evaluator.load(text)
    try:
        assert evaluator.check(table, username, "publish", "fw/acme/d1/x")
    finally:
        evaluator.free(table)


def test_unsafe_product_binds_to_nothing(evaluator: Evaluator) -> None:
    policy = parse_policy({"roles": {"all": {"publish": ["fw/{tenant}/{product}/x"]}}})
    subject = Subject("acme", "d1", "bad/product", {})
    username = mqtt_username(tenant="acme", environment="test", device_id="d1")
    text = compile_table(
        policies={"acme": policy},
        devices=[BrokerDevice(subject, username, ("01" * 20,))],
        generation=1,
        max_payload=10,
        service_username="svc",
    )
    table = evaluator.load(text)
    try:
        for topic in ("fw/acme//x", "fw/acme/bad/product/x", "fw/acme/bad/x"):
            assert not decide(policy, subject, "publish", topic).allowed
            assert not evaluator.check(table, username, "publish", topic)
    finally:
        evaluator.free(table)
