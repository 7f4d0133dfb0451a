"""The response API and CLI: tokens, tenants and refusals over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from fleetward.errors import InvalidInputError
from fleetward.identity import ca_service
from fleetward.identity.models import Device
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from tests.helpers import csr_pem, new_key
from tests.ota.helpers import operator
from tests.response.helpers import enroll
from tests.test_cli import fw

REVOKE = "name: revoke-batch\nparams: {batch: null}\ncohort: {batch: '{batch}'}\n" \
         "steps: [{action: revoke, reason: keyCompromise}]\n"  # fmt: skip


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_incident_workflow_over_the_api(client: TestClient, ctx: AppContext) -> None:
    sec, sec2 = operator(ctx, "security", "sec"), operator(ctx, "security", "sec2")
    auditor = operator(ctx, "auditor", "aud")
    ids = [f"api-{i}" for i in range(3)]
    enroll(ctx, ids, batch=21)
    enroll(ctx, ["bystander"], batch=22)
    resp = client.put("/api/v1/playbooks", json={"source": REVOKE}, headers=_h(sec))
    assert resp.status_code == 201 and resp.json()["version"] == 1
    bad = client.put("/api/v1/playbooks", json={"source": "name: x\nsteps: 3"}, headers=_h(sec))
    assert bad.status_code == 400 and "cohort" in bad.json()["detail"]
    assert (
        client.put("/api/v1/playbooks", json={"source": REVOKE}, headers=_h(auditor)).status_code
        == 403
    )
    inc = client.post("/api/v1/incidents", json={"title": "keys leaked"}, headers=_h(sec)).json()
    body = {"playbook": "revoke-batch", "params": {"batch": 21}, "environment": "test"}
    radius = client.post(f"/api/v1/incidents/{inc['id']}/blast-radius", json=body, headers=_h(sec))
    assert radius.status_code == 200 and radius.json()["devices"] == 3
    assert "device_pks" not in radius.json()
    resp = client.post(f"/api/v1/incidents/{inc['id']}/runs", json=body, headers=_h(sec))
    assert resp.status_code == 201, resp.text
    run = resp.json()
    assert run["state"] == "awaiting-approval" and run["approvals_needed"] == 1
    early = client.post(f"/api/v1/runs/{run['id']}/executions", headers=_h(sec))
    assert early.status_code == 409 and "0 of 1 approvals" in early.json()["detail"]
    own = client.post(f"/api/v1/runs/{run['id']}/approvals", headers=_h(sec))
    assert own.status_code == 403
    assert (
        client.post(f"/api/v1/runs/{run['id']}/approvals", headers=_h(sec2)).json()["state"]
        == "ready"
    )
    done = client.post(f"/api/v1/runs/{run['id']}/executions", headers=_h(sec))
    assert done.status_code == 200 and done.json()["state"] == "done", done.text
    got = client.get(f"/api/v1/incidents/{inc['id']}", headers=_h(auditor)).json()
    assert got["state"] == "contained" and got["runs"][0]["state"] == "done"
    assert [e["kind"] for e in got["timeline"]][-3:] == ["step.revoke", "run.done", "contained"]
    assert all(e["audit_seq"] for e in got["timeline"])
    with ctx.db.read() as s:
        states = set(s.execute(select(Device.state).where(Device.device_id.in_(ids))).scalars())
    assert states == {"revoked"}


def test_another_tenant_sees_nothing_and_touches_nothing(
    client: TestClient, ctx: AppContext
) -> None:
    sec = operator(ctx, "security", "sec")
    enroll(ctx, ["mine-0", "mine-1"], batch=31)
    enroll(ctx, ["mine-2"], batch=32)
    client.put("/api/v1/playbooks", json={"source": REVOKE}, headers=_h(sec))
    inc = client.post("/api/v1/incidents", json={"title": "ours"}, headers=_h(sec)).json()
    run = client.post(
        f"/api/v1/incidents/{inc['id']}/runs", headers=_h(sec),
        json={"playbook": "revoke-batch", "params": {"batch": 31}, "environment": "test"},
    ).json()  # fmt: skip
    with ctx.db.session() as s:
        acme = tenancy.create_tenant(s, name="acme", actor="test")
        ca_service.create_tenant_pki(s, ctx.pki, tenant=acme, actor="test")
        _, theirs = tenancy.create_token(
            s, tenant=acme, name="acme-sec", role="security", actor="t"
        )
    for method, path in [
        ("GET", f"/api/v1/incidents/{inc['id']}"),
        ("GET", "/api/v1/playbooks/revoke-batch"),
        ("GET", f"/api/v1/runs/{run['id']}"),
        ("POST", f"/api/v1/runs/{run['id']}/approvals"),
        ("POST", f"/api/v1/runs/{run['id']}/executions"),
    ]:
        assert client.request(method, path, headers=_h(theirs)).status_code == 404, path
    # Their playbook over our devices' batch finds nothing of ours.
    client.put("/api/v1/playbooks", json={"source": REVOKE}, headers=_h(theirs))
    own = client.post("/api/v1/incidents", json={"title": "theirs"}, headers=_h(theirs)).json()
    refused = client.post(
        f"/api/v1/incidents/{own['id']}/runs", headers=_h(theirs),
        json={"playbook": "revoke-batch", "params": {"batch": 31}, "environment": "test"},
    )  # fmt: skip
    assert refused.status_code == 400 and "matches no device" in refused.json()["detail"]
    with ctx.db.read() as s:
        assert set(
            s.execute(select(Device.state).where(Device.device_id.like("mine-%"))).scalars()
        ) == {"active"}


def test_the_cli_runs_a_playbook_with_a_security_approval(home: Path, tmp_path: Path) -> None:
    fw(home, "init")
    out = fw(home, "playbook", "install-standard")
    assert "emergency-ota" in out and "compromised-factory" in out
    (tmp_path / "pb.yaml").write_text(REVOKE.replace("batch: '{batch}'", "devices: '{batch}'"))
    assert "revoke-batch version 1 stored" in fw(home, "playbook", "put", str(tmp_path / "pb.yaml"))
    assert "revoke-batch" in fw(home, "playbook", "list")
    (tmp_path / "d.csr").write_bytes(csr_pem(new_key(), "cli-dev"))
    fw(home, "device", "enroll", "cli-dev", "--csr", str(tmp_path / "d.csr"), "--env", "test")
    assert "incident 1 opened" in fw(home, "incident", "open", "--title", "leak")
    with pytest.raises(InvalidInputError, match="not devices of tenant default"):
        fw(home, "incident", "dry-run", "1", "revoke-batch", "--param", "batch=nobody",
           "--env", "test")  # fmt: skip
    radius = fw(home, "incident", "dry-run", "1", "revoke-batch", "--param", "batch=cli-dev",
                "--env", "test")  # fmt: skip
    assert '"devices": 1' in radius and '"refusal": null' in radius
    assert "run 1: awaiting-approval" in fw(
        home, "incident", "run", "1", "revoke-batch", "--param", "batch=cli-dev", "--env", "test"
    )
    sec = fw(home, "token", "create", "sec", "--role", "security").strip().splitlines()[-1]
    assert "run 1: ready" in fw(home, "incident", "approve", "1", "--token", sec)
    assert "run 1: done" in fw(home, "incident", "execute", "1")
    shown = fw(home, "incident", "show", "1")
    assert shown.startswith("incident 1: leak (contained)")
    assert "revoked" in fw(home, "device", "show", "cli-dev")
