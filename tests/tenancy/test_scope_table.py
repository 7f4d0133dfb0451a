"""Every route, role and scope, generated from the app's routes.

The table is the app itself: each operator route declares the action it
performs (``Allow(scope.X)``), and this test calls every route with a token of
every role, unscoped, scoped to ``test``, scoped to ``production``, and bound
to a ``test`` factory, against objects that live in ``production``. The
expected answer comes from :func:`fleetward.tenancy.scope.decide` with what
the object is; the test checks that the server agrees: a refusal is a 403
problem detail, an allowed call is never refused for role or scope, and
nothing answers 5xx. A route that declares no action and is not listed as
public fails the test, so a new route cannot go without a decision.
"""

from __future__ import annotations

import base64
import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import load_pem_x509_csr
from fastapi.testclient import TestClient
from sqlalchemy import select

from fleetward.api.app import create_app
from fleetward.api.deps import Authorize
from fleetward.api.gate import needs_of
from fleetward.identity.models import CertificateRecord, Device
from fleetward.provisioning import service as provisioning
from fleetward.runtime.context import AppContext
from fleetward.store import utcnow
from fleetward.tenancy import scope
from fleetward.tenancy import service as tenancy
from fleetward.tenancy.roles import ROLES, Principal
from tests.helpers import csr_pem
from tests.response.helpers import ADMIN, enroll

# Routes anyone may call: device-facing (authenticated by a certificate or
# signed evidence, or public by nature) and the API's own documentation.
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/metrics"),  # operator plane, loopback; counts only (see api/metrics.py)
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/docs"),
    ("GET", "/api/v1/docs/assets/{name}"),  # Swagger UI, vendored (api/static)
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/crl/{ca_id}.crl"),
    ("GET", "/ca/{ca_id}.crt"),
    ("POST", "/ocsp"),
    ("GET", "/ocsp/{encoded:path}"),
    ("GET", "/api/v1/comms/broker"),
    ("POST", "/api/v1/renew"),
    ("POST", "/api/v1/device/telemetry"),  # device plane: the TLS client certificate
    ("GET", "/tuf/{tenant}/metadata/{filename}"),
    ("GET", "/tuf/{tenant}/targets/{path:path}"),
    ("POST", "/api/v1/attestation/{tenant}/{device_id}/nonce"),
    ("POST", "/api/v1/attestation/{tenant}/{device_id}/evidence"),
    ("GET", "/.well-known/est/cacerts"),
    ("GET", "/.well-known/est/{label}/cacerts"),
    ("POST", "/.well-known/est/simplereenroll"),
    ("POST", "/.well-known/est/{label}/simplereenroll"),
    ("GET", "/login"),  # the console's sign-in (tests/web/test_session.py)
    ("POST", "/login"),
    ("POST", "/logout"),
    ("GET", "/console/assets/{name}"),
}
# Routes that authenticate an operator token inside the handler (EST takes
# HTTP Basic from stock clients), with the action they check.
IN_HANDLER = {
    ("POST", "/.well-known/est/simpleenroll"): scope.DEVICE_ENROLL,
    ("POST", "/.well-known/est/{label}/simpleenroll"): scope.DEVICE_ENROLL,
}
REVOKE = "name: revoke-batch\nparams: {batch: null}\ncohort: {batch: '{batch}'}\n" \
         "steps: [{action: revoke, reason: keyCompromise}]\n"  # fmt: skip
PROD_BATCH_LABEL = 31


def _action_of(route: Any) -> scope.Action | None:
    dependant = getattr(route, "dependant", None)
    stack = list(dependant.dependencies) if dependant is not None else []
    while stack:
        dep = stack.pop()
        if isinstance(dep.call, Authorize):
            return dep.call.action
        stack.extend(dep.dependencies)
    return None


def _flat(routes: list[Any]) -> Iterator[Any]:
    """Every route, through included routers (FastAPI keeps those as branches)."""
    for route in routes:
        if hasattr(route, "effective_candidates"):
            yield from _flat(route.effective_candidates())
        else:
            yield route


def _routes(app: Any) -> Iterator[tuple[str, str, Any]]:
    for route in _flat(app.routes):
        for method in sorted((getattr(route, "methods", None) or {"GET"}) - {"HEAD"}):
            yield method, route.path, route


@dataclass
class World:
    """Production objects to act on, and ids for the path parameters."""

    key: ec.EllipticCurvePrivateKey
    prod_factory: int
    prod_batch: int
    serial: str
    victim: str
    incident: int
    closable: int
    run: int
    counter: Iterator[int] = field(default_factory=itertools.count)

    def csr(self, device_id: str) -> str:
        return csr_pem(self.key, device_id).decode()

    def csr_b64(self, device_id: str) -> bytes:
        der = load_pem_x509_csr(csr_pem(self.key, device_id)).public_bytes(Encoding.DER)
        return base64.b64encode(der)


@dataclass(frozen=True)
class Case:
    """How to call one route against production, and what it touches."""

    params: dict[str, Any] = field(default_factory=dict)
    body: Callable[[World, int], Any] | None = None
    environments: frozenset[str] = frozenset()
    factory: bool = False  # the target is the production factory
    grant: tuple[str, str | None, bool] | None = None  # role, environment, production factory
    default_environment: bool = False


PROD = frozenset({"production"})
NONE: frozenset[str] = frozenset()

# Routes that change objects in one environment: the call and the target.
CASES: dict[tuple[str, str], Case] = {
    ("POST", "/api/v1/tokens"): Case(
        body=lambda w, n: {"name": f"t{n}", "role": "admin"}, grant=("admin", None, False)
    ),
    ("DELETE", "/api/v1/tokens/{token_id}"): Case(grant=("admin", None, False)),
    ("POST", "/api/v1/devices"): Case(body=lambda w, n: {"device_id": f"reg-{n}"}),
    ("POST", "/api/v1/devices/{device_id}/certificates"): Case(
        params={"device_id": "new-{n}"},
        body=lambda w, n: {"csr": w.csr(f"new-{n}"), "environment": "production"},
        environments=PROD,
    ),
    ("POST", "/api/v1/enrollments"): Case(
        body=lambda w, n: {
            "items": [{"device_id": f"nb-{n}", "csr": w.csr(f"nb-{n}")}],
            "environment": "production",
        },
        environments=PROD,
    ),
    ("POST", "/api/v1/devices/{device_id}/state"): Case(
        params={"device_id": "prod-1"},
        body=lambda w, n: {"state": "quarantined", "reason": "probe"},
        environments=PROD,
    ),
    ("POST", "/api/v1/revocations/devices"): Case(
        body=lambda w, n: {"device_ids": ["prod-2"], "reason": "keyCompromise"},
        environments=PROD,
    ),
    ("POST", "/api/v1/devices/{device_id}/revocation"): Case(
        params={"device_id": "prod-3"},
        body=lambda w, n: {"reason": "keyCompromise"},
        environments=PROD,
    ),
    ("POST", "/api/v1/certificates/{serial}/revocation"): Case(
        body=lambda w, n: {"reason": "keyCompromise"}, environments=PROD
    ),
    ("POST", "/api/v1/devices/{device_id}/commands/{name}"): Case(
        params={"device_id": "prod-5", "name": "not-in-policy"},
        body=lambda w, n: {"args": {}},
        environments=PROD,
    ),
    ("POST", "/api/v1/telemetry/events"): Case(
        body=lambda w, n: {"events": [{"device": "prod-5", "type": "probe.x", "fields": {}}]},
        environments=PROD,
    ),
    ("POST", "/api/v1/provisioning/reprovision-grants"): Case(
        body=lambda w, n: {"device_id": "prod-5", "reason": "probe"}, environments=PROD
    ),
    ("POST", "/api/v1/provisioning/factories"): Case(
        body=lambda w, n: {"name": f"fac-{n}", "environment": "production"}, environments=PROD
    ),
    ("POST", "/api/v1/provisioning/factories/{factory_id}/tokens"): Case(
        body=lambda w, n: {"name": f"ft-{n}"}, grant=("factory-operator", "production", True)
    ),
    ("POST", "/api/v1/provisioning/batches"): Case(
        body=lambda w, n: {
            "factory_id": w.prod_factory,
            "product": "p",
            "expires_in_hours": 1,
            "device_ids": [f"bb-{n}"],
        },
        environments=PROD,
        factory=True,
    ),
    ("POST", "/api/v1/provisioning/batches/{batch_id}/status"): Case(
        body=lambda w, n: {"status": "closed"}, environments=PROD, factory=True
    ),
    ("POST", "/api/v1/provisioning/batches/{batch_id}/enroll"): Case(
        body=lambda w, n: {"items": [{"device_id": f"pb-{n:06}", "csr": w.csr(f"pb-{n:06}")}]},
        environments=PROD,
        factory=True,
    ),
    ("POST", "/api/v1/provisioning/nonces"): Case(),
    ("POST", "/api/v1/incidents"): Case(body=lambda w, n: {"title": f"probe {n}"}),
    # The incident has a production run: it lives in production.
    ("POST", "/api/v1/incidents/{incident_id}/notes"): Case(
        body=lambda w, n: {"text": "probe"}, environments=PROD
    ),
    ("POST", "/api/v1/incidents/{incident_id}/state"): Case(
        params={"incident_id": "{closable}"}, body=lambda w, n: {"state": "closed"}
    ),
    ("POST", "/api/v1/alerts/{alert_id}/state"): Case(body=lambda w, n: {"state": "resolved"}),
    ("POST", "/api/v1/campaigns/{campaign_id}/state"): Case(body=lambda w, n: {"state": "running"}),
    ("POST", "/api/v1/incidents/{incident_id}/blast-radius"): Case(
        body=lambda w, n: {
            "playbook": "revoke-batch",
            "params": {"batch": PROD_BATCH_LABEL},
            "environment": "production",
        },
        environments=PROD,
    ),
    ("POST", "/api/v1/incidents/{incident_id}/runs"): Case(
        body=lambda w, n: {
            "playbook": "revoke-batch",
            "params": {"batch": PROD_BATCH_LABEL},
            "environment": "production",
        },
        environments=PROD,
    ),
    ("POST", "/api/v1/runs/{run_id}/approvals"): Case(environments=PROD),
    ("POST", "/api/v1/runs/{run_id}/executions"): Case(environments=PROD),
    # The tenant's production issuing CA (ids: root 1, then test, production,
    # drill): it is active, so an allowed call is refused with 409.
    ("POST", "/api/v1/cas/{ca_id}/distrust"): Case(
        params={"ca_id": 3}, body=lambda w, n: {"force": True}, environments=PROD
    ),
    ("POST", "/.well-known/est/simpleenroll"): Case(default_environment=True),
    ("POST", "/.well-known/est/{label}/simpleenroll"): Case(environments=PROD),
}


def _world(ctx: AppContext, client: TestClient, admin_token: str) -> World:
    key = enroll(ctx, [f"prod-{i}" for i in range(1, 7)], env="production", batch=PROD_BATCH_LABEL)
    enroll(ctx, ["test-1"], env="test")
    enroll(ctx, ["prod-other"], env="production", batch=PROD_BATCH_LABEL + 1)
    with ctx.db.session() as s:
        factory = provisioning.create_factory(s, ADMIN, name="line-prod", environment="production")
        batch = provisioning.create_batch(
            s,
            ADMIN,
            factory_id=factory.id,
            product="p",
            expires_at=utcnow().replace(year=utcnow().year + 1),
            range_prefix="pb-",
            range_start=0,
            range_end=999_999,
            range_width=6,
        )
        serial = s.execute(
            select(CertificateRecord.serial)
            .join(Device, Device.id == CertificateRecord.device_pk)
            .where(Device.device_id == "prod-4")
        ).scalar_one()
        victim, _ = tenancy.create_token(
            s, tenant=tenancy.get_tenant(s, 1), name="victim", role="admin", actor="test"
        )
        ids = factory.id, batch.id, victim.id
    h = {"Authorization": f"Bearer {admin_token}"}
    assert client.put("/api/v1/playbooks", json={"source": REVOKE}, headers=h).status_code == 201
    incident = client.post("/api/v1/incidents", json={"title": "a"}, headers=h).json()["id"]
    closable = client.post("/api/v1/incidents", json={"title": "b"}, headers=h).json()["id"]
    run = client.post(
        f"/api/v1/incidents/{incident}/runs",
        json={
            "playbook": "revoke-batch",
            "params": {"batch": PROD_BATCH_LABEL},
            "environment": "production",
        },
        headers=h,
    )
    assert run.status_code == 201 and run.json()["state"] == "awaiting-approval", run.text
    return World(
        key=key,
        prod_factory=ids[0],
        prod_batch=ids[1],
        serial=serial,
        victim=ids[2],
        incident=incident,
        closable=closable,
        run=run.json()["id"],
    )


def _principals(ctx: AppContext, test_factory: int) -> list[tuple[Principal, str]]:
    out = []
    with ctx.db.session() as s:
        tenant = tenancy.get_tenant(s, 1)
        for role in ROLES:
            for env in (None, "test", "production"):
                row, token = tenancy.create_token(
                    s, tenant=tenant, name=f"{role}-{env}", role=role, environment=env, actor="t"
                )
                out.append((Principal(1, "default", role, f"token:{row.id}", env), token))
        row, token = tenancy.create_token(
            s,
            tenant=tenant,
            name="station",
            role="factory-operator",
            environment="test",
            factory_id=test_factory,
            actor="t",
        )
        out.append(
            (
                Principal(
                    1, "default", "factory-operator", f"token:{row.id}", "test", test_factory
                ),
                token,
            )
        )
    return out


def _fill(path: str, params: dict[str, Any], world: World, n: int) -> str:
    defaults: dict[str, Any] = {
        "device_id": "prod-1",
        "serial": world.serial,
        "batch_id": world.prod_batch,
        "factory_id": world.prod_factory,
        "token_id": world.victim,
        "incident_id": world.incident,
        "run_id": world.run,
        "name": "revoke-batch",
        "label": "production",
        "product": "p1",
        "kind": "boot-integrity",
        "seq": 1,
    }
    values = {**defaults, **params}

    def one(m: re.Match[str]) -> str:
        value = values.get(m.group(1), 999_999)
        text = str(value).replace("{n}", str(n)).replace("{closable}", str(world.closable))
        return text

    return re.sub(r"\{([a-z_]+)(?::path)?\}", one, path)


def _expected(who: Principal, action: scope.Action, case: Case, world: World) -> scope.Decision:
    if case.grant is not None:
        role, env, factory = case.grant
        return scope.decide_grant(
            who, role=role, environment=env, factory_id=world.prod_factory if factory else None
        )
    environments = case.environments
    if case.default_environment:  # no environment named: the token's, else production
        environments = frozenset({who.environment or "production"})
    target = scope.Target(environments, world.prod_factory if case.factory else None)
    return scope.decide(who, action, target)


@pytest.mark.slow
def test_every_route_every_role_every_scope(ctx: AppContext, admin_token: str) -> None:
    app = create_app(ctx, crl_interval=3600, checkpoint_interval=3600)
    device_app = create_app(ctx, plane="device", runtime=app.state.runtime, run_runtime=False)
    with (
        TestClient(app, raise_server_exceptions=False) as client,
        TestClient(device_app, raise_server_exceptions=False) as device_client,
    ):
        world = _world(ctx, client, admin_token)
        with ctx.db.session() as s:
            test_factory = provisioning.create_factory(
                s, ADMIN, name="line-test", environment="test"
            ).id
        principals = _principals(ctx, test_factory)
        table: list[tuple[str, str, scope.Action]] = []
        # Each route is tried on its own plane (the other answers 404).
        routes = [*_routes(app), *_routes(device_app)]
        device_paths = {(m, p) for m, p, _ in _routes(device_app)}
        for method, path, route in routes:
            if needs_of(route) == "console":  # a console page: tests/web/test_attacks.py
                continue
            action = _action_of(route)
            if action is None:
                action = IN_HANDLER.get((method, path))
            if action is None:
                assert (method, path) in PUBLIC, f"{method} {path} declares no action"
                continue
            assert (method, path) not in PUBLIC, f"{method} {path} is public and authorized"
            if action.reach is scope.Reach.OBJECTS:
                assert (method, path) in CASES, f"{method} {path}: add how to call it"
            table.append((method, path, action))
        assert len(table) >= 74, len(table)
        failures: list[str] = []
        checked = refused = 0
        for method, path, action in table:
            case = CASES.get((method, path), Case())
            for who, token in principals:
                n = next(world.counter)
                url = _fill(path, case.params, world, n)
                if (method, path) in device_paths and path.startswith("/.well-known/est/"):
                    resp = device_client.post(
                        url,
                        content=world.csr_b64(f"est-{n}"),
                        headers={
                            "Authorization": "Basic "
                            + base64.b64encode(f"est-{n}:{token}".encode()).decode(),
                            "Content-Type": "application/pkcs10",
                        },
                    )
                else:
                    body = case.body(world, n) if case.body else {}
                    resp = client.request(
                        method,
                        url,
                        json=body if method in ("POST", "PUT", "PATCH") else None,
                        headers={"Authorization": f"Bearer {token}"},
                    )
                expected = _expected(who, action, case, world)
                label = f"{method} {url} as {who.role}/{who.environment}/{who.factory_id}"
                checked += 1
                if resp.status_code >= 500:
                    failures.append(f"{label}: {resp.status_code} {resp.text[:200]}")
                elif not expected.allowed:
                    refused += 1
                    ok = resp.status_code == 403 and resp.headers["content-type"].startswith(
                        "application/problem+json"
                    )
                    if not ok:
                        failures.append(
                            f"{label}: expected 403 (rule {expected.rule}: {expected.reason}), "
                            f"got {resp.status_code} {resp.text[:200]}"
                        )
                elif resp.status_code == 403:
                    problem = resp.json()
                    if problem["type"].endswith("out-of-scope") or problem["detail"].startswith(
                        "role "
                    ):
                        failures.append(f"{label}: allowed, but refused: {problem['detail']}")
        assert not failures, "\n".join(failures[:40]) + f"\n({len(failures)} in all)"
        # The table is not vacuous: both answers occur, on many routes.
        assert checked == len(table) * len(principals)
        assert 0.2 * checked < refused < 0.9 * checked, (refused, checked)
