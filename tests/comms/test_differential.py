"""The C evaluator the broker plugin runs must mean what policy.py means.

Hypothesis generates policies, devices and topics; each decision is taken by
:func:`fleetward.comms.policy.decide` and by ``fw_acl.c`` over the table
:func:`fleetward.comms.compile.compile_table` wrote. They must agree. The same
holds for fleetward's own identities: :func:`fleetward.comms.identities.decide_service`
against the table's service records.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetward.comms.compile import BrokerDevice, BrokerService, compile_table, mqtt_username
from fleetward.comms.identities import SERVICE_IDENTITIES, ServiceIdentity, decide_service
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
        lib.fw_service_check_text.argtypes = lib.fw_check_text.argtypes
        lib.fw_service_check_text.restype = ctypes.c_int

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

    def check_service(self, table: int, username: str, action: Action, topic: str) -> bool:
        code = ACTION_CODES[action]
        return bool(self.lib.fw_service_check_text(table, username.encode(), code, topic.encode()))

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
            devices["environment"] = draw(st.sampled_from(["test", "production", "drill"]))
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
    environment=st.sampled_from(["test", "production", "drill"]),
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
    env = subject.environment or "test"
    username = mqtt_username(tenant=subject.tenant, environment=env, device_id=subject.device_id)
    text = compile_table(
        policies={"acme": policy},
        devices=[BrokerDevice(subject=subject, username=username, serials=("0a" * 20,))],
        services=SERVICES,
        generation=1,
        max_payload=1024,
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


HEADER = "fwacl\t3\t1\t1\n"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "nonsense\n",
        "fwacl\t1\t1\t1\tsvc\n",  # an old format
        "fwacl\t2\t1\t1\tsvc\t\nend\n",  # the format with one all-powerful identity
        HEADER + "i\tp\tfw/#\nend\n",  # a pattern before any identity
        HEADER + "I\tCN=s\t\nend\n",  # an identity without a certificate
        HEADER + "I\tCN=s\t" + "01" * 20 + "\ni\tp\tfw/{tenant}/x\nend\n",  # a variable
        HEADER + "I\tCN=s\t" + "01" * 20 + "\ni\ts\t#\nend\n",  # outside fw/
        HEADER + "I\tCN=s\t" + "01" * 20 + "\ni\tp\tfw/#/x\nend\n",  # '#' not last
        HEADER + "I\tCN=s\t" + "01" * 20 + "\nI\tCN=s\t" + "02" * 20 + "\nend\n",  # twice
        HEADER + "R\tr\nI\tCN=s\t" + "01" * 20 + "\nend\n",  # an identity after the roles
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
    )
    table = evaluator.load(text)
    try:
        for topic in ("fw/acme//x", "fw/acme/bad/product/x", "fw/acme/bad/x"):
            assert not decide(policy, subject, "publish", topic).allowed
            assert not evaluator.check(table, username, "publish", topic)
    finally:
        evaluator.free(table)


SERVICES = [
    BrokerService(identity=ident, certificates=(f"{i + 1:02x}" * 20,))
    for i, ident in enumerate(SERVICE_IDENTITIES.values())
]
SERVICE_WORDS = ["fw", "acme", "d1", "cmd", "ota", "offer", "fallback", "state", "telemetry", "x"]
pattern = st.builds(
    lambda mid, tail: "/".join(["fw", *mid, *tail]),
    st.lists(st.sampled_from([*SERVICE_WORDS, "+"]), min_size=1, max_size=4),
    st.sampled_from([[], ["#"]]),
)
identities = st.builds(
    lambda pub, sub: ServiceIdentity("svc", publish=tuple(pub), subscribe=tuple(sub)),
    st.lists(pattern, max_size=3),
    st.lists(pattern, max_size=3),
)


@st.composite
def service_checks(draw: st.DrawFn, ident: ServiceIdentity) -> tuple[Action, str]:
    action: Action = draw(st.sampled_from(["publish", "subscribe", "receive"]))
    patterns = [*ident.publish, *ident.subscribe]
    levels: list[str] = []
    from_pattern = bool(patterns) and draw(st.sampled_from([True, False]))
    if from_pattern:
        for lv in draw(st.sampled_from(patterns)).split("/"):
            if lv == "#":
                levels.extend(draw(st.lists(st.sampled_from(SERVICE_WORDS), max_size=2)))
            elif lv == "+":
                levels.append(draw(st.sampled_from(SERVICE_WORDS)))
            else:
                levels.append(lv)
    else:
        levels = draw(st.lists(st.sampled_from([*SERVICE_WORDS, ""]), min_size=1, max_size=6))
    if action == "subscribe":
        levels = [draw(st.sampled_from([lv, "+", lv])) for lv in levels]
        if draw(st.integers(0, 3)) == 0:
            levels.append("#")
        share = draw(st.integers(0, 4))
        if share == 0:
            levels = ["$share", "g", *levels]
        elif share == 1:
            levels = ["$share", draw(st.sampled_from(["+", "#", "g"]))]
    elif draw(st.integers(0, 9)) == 0:
        levels = ["$share", "g", *levels]
    return action, "/".join(levels)


@settings(max_examples=600, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ident=identities, data=st.data())
def test_c_evaluator_agrees_on_service_identities(
    evaluator: Evaluator, ident: ServiceIdentity, data: st.DataObject
) -> None:
    probes = data.draw(st.lists(service_checks(ident), min_size=1, max_size=12))
    text = compile_table(
        policies={},
        devices=[],
        services=[BrokerService(identity=ident, certificates=("0b" * 20,))],
        generation=1,
        max_payload=10,
    )
    table = evaluator.load(text)
    try:
        for action, topic in probes:
            try:
                expected = decide_service(ident, action, topic).allowed
            except InvalidInputError:
                continue
            got = evaluator.check_service(table, ident.username, action, topic)
            assert got == expected, (action, topic)
            # A service identity is never a device.
            assert not evaluator.check(table, ident.username, action, topic)
    finally:
        evaluator.free(table)


JOB_CASES = [
    # (job, action, topic, allowed)
    ("ingest", "subscribe", "$share/fleetward-ingest/fw/+/+/telemetry/#", True),
    ("ingest", "subscribe", "fw/+/+/state/#", True),
    ("ingest", "receive", "fw/acme/d1/telemetry/temp", True),
    ("ingest", "receive", "fw/acme/d1/state/ota", True),
    ("ingest", "publish", "fw/acme/d1/telemetry/temp", False),  # no forged readings
    ("ingest", "publish", "fw/acme/d1/cmd/ping", False),
    ("ingest", "subscribe", "fw/#", False),
    ("ingest", "subscribe", "#", False),
    ("ingest", "subscribe", "$share/g/#", False),
    ("ingest", "subscribe", "fw/+/+/cmd-result/+", False),
    ("ingest", "receive", "fw/acme/d1/boot/evidence", False),
    ("commands", "publish", "fw/acme/d1/cmd/ping", True),
    ("commands", "publish", "fw/acme/d1/ota/offer", False),
    ("commands", "publish", "fw/acme/d1/telemetry/x", False),
    ("commands", "publish", "fw/acme/d1/cmd/ping/x", False),
    ("commands", "subscribe", "fw/+/+/cmd/+", False),
    ("commands", "receive", "fw/acme/d1/cmd/ping", False),
    ("ota", "publish", "fw/acme/d1/ota/offer", True),
    ("ota", "publish", "fw/acme/d1/ota/fallback", True),
    ("ota", "subscribe", "fw/+/+/state/ota", True),
    ("ota", "receive", "fw/acme/d1/state/ota", True),
    ("ota", "publish", "fw/acme/d1/cmd/wipe", False),
    ("ota", "publish", "fw/acme/d1/ota/manifest", False),
    ("ota", "subscribe", "fw/+/+/state/#", False),
    ("ota", "subscribe", "fw/+/+/telemetry/#", False),
    ("ota", "receive", "fw/acme/d1/telemetry/x", False),
]


@pytest.mark.parametrize(("job", "action", "topic", "allowed"), JOB_CASES)
def test_each_service_identity_is_allowed_its_job_only(
    evaluator: Evaluator, job: str, action: Action, topic: str, allowed: bool
) -> None:
    ident = SERVICE_IDENTITIES[job]
    assert decide_service(ident, action, topic).allowed is allowed
    text = compile_table(policies={}, devices=[], services=SERVICES, generation=1, max_payload=10)
    table = evaluator.load(text)
    try:
        assert evaluator.check_service(table, ident.username, action, topic) is allowed
        # The identity of earlier versions (allowed everything) is gone.
        assert not evaluator.check_service(table, "CN=fleetward-broker-service", action, topic)
    finally:
        evaluator.free(table)


def test_no_service_identity_is_allowed_everything() -> None:
    device_topics = (
        "fw/a/d/telemetry/x",
        "fw/a/d/state/ota",
        "fw/a/d/boot/e",
        "fw/a/d/cmd-result/p",
    )
    for ident in SERVICE_IDENTITIES.values():
        assert not decide_service(ident, "subscribe", "fw/#").allowed
        assert not decide_service(ident, "publish", "fw/a/b/c").allowed
        assert not decide_service(ident, "receive", "fw/a/b/c").allowed
        # None may publish where devices publish.
        for topic in device_topics:
            assert not decide_service(ident, "publish", topic).allowed


def test_environment_selectors_pick_roles_by_listener(evaluator: Evaluator) -> None:
    policy = parse_policy(
        {
            "roles": {
                "prod": {
                    "devices": {"environment": "production"},
                    "publish": ["fw/{tenant}/{device}/telemetry/#"],
                },
                "lab": {
                    "devices": {"environment": "test"},
                    "publish": ["fw/{tenant}/{device}/debug/#"],
                },
            }
        }
    )
    devices = [
        BrokerDevice(
            Subject("acme", "d1", "p", {}, environment=env),
            mqtt_username(tenant="acme", environment=env, device_id="d1"),
            ("01" * 20,),
        )
        for env in ("production", "test", "drill")
    ]
    text = compile_table(policies={"acme": policy}, devices=devices, generation=1, max_payload=10)
    table = evaluator.load(text)
    try:
        prod, test, drill = (d.username for d in devices)
        assert evaluator.check(table, prod, "publish", "fw/acme/d1/telemetry/t")
        assert not evaluator.check(table, prod, "publish", "fw/acme/d1/debug/x")
        assert evaluator.check(table, test, "publish", "fw/acme/d1/debug/x")
        assert not evaluator.check(table, test, "publish", "fw/acme/d1/telemetry/t")
        assert not evaluator.check(table, drill, "publish", "fw/acme/d1/telemetry/t")
        for d in devices:
            for topic in ("fw/acme/d1/telemetry/t", "fw/acme/d1/debug/x"):
                assert decide(policy, d.subject, "publish", topic).allowed == evaluator.check(
                    table, d.username, "publish", topic
                )
    finally:
        evaluator.free(table)
    with pytest.raises(InvalidInputError, match="environment"):
        parse_policy({"roles": {"r": {"devices": {"environment": "staging"}}}})
    assert policy.roles[0].environment == "production"
    assert parse_policy(policy.document()) == policy
