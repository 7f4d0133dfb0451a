"""The TUF repository and releases against the stock python-tuf client.

Each attack the issue names is played against ``tuf.ngclient.Updater``
talking HTTP to a live fleetward: the client must refuse.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata

from fleetward.ota import repository as ota
from fleetward.ota.blobs import LocalBlobStore
from fleetward.ota.models import Release, TufMetadata
from fleetward.runtime.context import AppContext
from fleetward.runtime.stack import Stack
from fleetward.store.db import utcnow
from tests.ota.helpers import call, operator, updater, upload

IMAGE = b"\x7fELF firmware 1.0.0" * 100


@pytest.fixture
def repo(live: str, ctx: AppContext, admin_token: str) -> dict[str, str]:
    """Product ``thermo`` with a 2-of-2 release role and two release managers."""
    resp = call(live, admin_token, "POST", "/api/v1/ota/products/thermo", json={"threshold": 2})
    assert resp.status_code == 201, resp.text
    return {
        "rm1": operator(ctx, "release-manager", "rm1"),
        "rm2": operator(ctx, "release-manager", "rm2"),
        "auditor": operator(ctx, "auditor", "aud"),
    }


def root_of(ctx: AppContext) -> bytes:
    with ctx.db.read() as s:
        return ota.trusted_root(s, "default")


def release(live: str, ops: dict[str, str], version: str, image: bytes = IMAGE) -> int:
    resp = upload(live, ops["rm1"], product="thermo", version=version, image=image)
    assert resp.status_code == 201, resp.text
    rid = int(resp.json()["id"])
    for who in ("rm1", "rm2"):
        resp = call(live, ops[who], "POST", f"/api/v1/releases/{rid}/approvals")
        assert resp.status_code == 200, resp.text
    assert resp.json()["state"] == "deployable"
    return rid


def test_root_threshold_and_delegation(live: str, ctx: AppContext, repo: dict[str, str]) -> None:
    root = Metadata.from_bytes(root_of(ctx))
    assert root.signed.roles["root"].threshold == 2
    assert len(root.signed.roles["root"].keyids) == 3
    assert root.signed.consistent_snapshot is True
    resp = call(live, repo["rm1"], "GET", "/api/v1/releases")
    assert resp.status_code == 200


def test_release_gate_then_stock_client_verifies_and_downloads(
    live: str, ctx: AppContext, repo: dict[str, str], tmp_path: Path
) -> None:
    resp = upload(live, repo["rm1"], product="thermo", version="1.0.0", image=IMAGE)
    assert resp.status_code == 201, resp.text
    out = resp.json()
    assert out["state"] == "pending"
    assert out["gate"] == ["signed by 0 of the 2 release signers needed"]
    rid = out["id"]
    client = updater(ctx, tmp_path / "c1", root_of(ctx))
    client.refresh()
    assert client.get_targetinfo("thermo/1.0.0/fw.bin") is None  # not signed yet
    assert call(live, repo["rm1"], "POST", f"/api/v1/releases/{rid}/approvals").json()["state"] == (
        "pending"
    )
    again = call(live, repo["rm1"], "POST", f"/api/v1/releases/{rid}/approvals")
    assert again.status_code == 409  # one signer, one approval
    assert (
        call(live, repo["auditor"], "POST", f"/api/v1/releases/{rid}/approvals").status_code == 403
    )
    done = call(live, repo["rm2"], "POST", f"/api/v1/releases/{rid}/approvals").json()
    assert done["state"] == "deployable" and done["gate"] == []
    client = updater(ctx, tmp_path / "c2", root_of(ctx))
    client.refresh()
    info = client.get_targetinfo("thermo/1.0.0/fw.bin")
    assert info is not None
    assert info.custom["version"] == "1.0.0" and info.custom["hardware"] == ["board-a"]
    assert Path(client.download_target(info)).read_bytes() == IMAGE


def test_versions_strictly_increase(live: str, repo: dict[str, str]) -> None:
    assert (
        upload(live, repo["rm1"], product="thermo", version="1.2.0", image=b"a").status_code == 201
    )
    for v in ("1.2.0", "1.1.9", "0.9.0"):
        resp = upload(live, repo["rm1"], product="thermo", version=v, image=b"b")
        assert resp.status_code == 409, resp.text
        assert "strictly increase" in resp.text
    assert upload(live, repo["rm1"], product="thermo", version="1.2", image=b"c").status_code == 400


@pytest.mark.parametrize(
    ("sbom", "meas", "finding"),
    [
        (None, None, "no SBOM"),
        (b"{not json", None, "SBOM: SBOM is not JSON"),
        (b'{"bomFormat": "SPDX"}', None, "SBOM: SBOM must be CycloneDX"),
        (b"", {"bootloader": "00" * 32}, "measurements: unknown"),
    ],
)
def test_release_without_sbom_or_measurements_never_deploys(
    live: str,
    repo: dict[str, str],
    sbom: bytes | None,
    meas: dict[str, str] | None,
    finding: str,
) -> None:
    if meas is not None:
        meas = {"bootloader": "00" * 32, "bogus": "11" * 32}
        sbom = None
    resp = upload(
        live, repo["rm1"], product="thermo", version="2.0.0", image=b"x", sbom=sbom, meas=meas
    )
    assert resp.status_code == 201, resp.text
    rid = resp.json()["id"]
    call(live, repo["rm1"], "POST", f"/api/v1/releases/{rid}/approvals")
    out = call(live, repo["rm2"], "POST", f"/api/v1/releases/{rid}/approvals").json()
    assert out["state"] == "pending"
    assert any(f.startswith(finding) for f in out["gate"]), out["gate"]


def test_tampered_artifact_is_refused(
    live: str, ctx: AppContext, repo: dict[str, str], tmp_path: Path
) -> None:
    release(live, repo, "1.0.0")
    with ctx.db.read() as s:
        sha = s.execute(select(Release.sha256)).scalar_one()
    blob = LocalBlobStore(ctx.settings.home / "blobs").path(sha)
    blob.write_bytes(IMAGE.replace(b"1.0.0", b"6.6.6"))  # same length, other bytes
    client = updater(ctx, tmp_path / "c", root_of(ctx))
    client.refresh()
    info = client.get_targetinfo("thermo/1.0.0/fw.bin")
    assert info is not None
    with pytest.raises(tuf_errors.LengthOrHashMismatchError):
        client.download_target(info)
    assert not any(p.name.endswith("fw.bin") for p in (tmp_path / "c").iterdir())


def test_artifact_not_in_targets_is_not_offered(
    live: str, ctx: AppContext, repo: dict[str, str], tmp_path: Path
) -> None:
    release(live, repo, "1.0.0")
    client = updater(ctx, tmp_path / "c", root_of(ctx))
    client.refresh()
    assert client.get_targetinfo("thermo/1.0.1/fw.bin") is None
    assert client.get_targetinfo("other/1.0.0/fw.bin") is None


def _rewrite_latest(ctx: AppContext, role: str, edit: object) -> None:
    with ctx.db.session() as s:
        row = s.execute(
            select(TufMetadata)
            .where(TufMetadata.role == role)
            .order_by(TufMetadata.version.desc())
            .limit(1)
        ).scalar_one()
        data = json.loads(row.body)
        edit(data)  # type: ignore[operator]
        row.body = json.dumps(data).encode()


def test_metadata_signed_below_threshold_is_refused(
    live: str, ctx: AppContext, repo: dict[str, str], tmp_path: Path
) -> None:
    release(live, repo, "1.0.0")
    _rewrite_latest(ctx, "product-thermo", lambda d: d["signatures"].pop())  # 1 of 2 left
    client = updater(ctx, tmp_path / "c", root_of(ctx))
    client.refresh()
    with pytest.raises(tuf_errors.UnsignedMetadataError):
        client.get_targetinfo("thermo/1.0.0/fw.bin")


def test_expired_timestamp_is_refused(
    live: str, ctx: AppContext, runtime: Stack, repo: dict[str, str], tmp_path: Path
) -> None:
    """Freeze attack: a repository (or a mirror) that stops updating."""
    # The live server's refresher would re-sign the expired timestamp (its
    # job): paused, no round runs from here on.
    runtime.pause("tuf-refresh")
    release(live, repo, "1.0.0")
    with ctx.db.session() as s:
        ota._publish_snapshot_and_timestamp(s, ctx.pki.keyring, 1, utcnow() - dt.timedelta(days=3))
    client = updater(ctx, tmp_path / "c", root_of(ctx))
    with pytest.raises(tuf_errors.ExpiredMetadataError):
        client.refresh()


def test_older_metadata_is_refused(
    live: str, ctx: AppContext, repo: dict[str, str], tmp_path: Path
) -> None:
    """Rollback attack: after seeing timestamp N, the client is served N-1."""
    release(live, repo, "1.0.0")
    client = updater(ctx, tmp_path / "c", root_of(ctx))
    client.refresh()
    with ctx.db.session() as s:
        newest = s.execute(
            select(TufMetadata)
            .where(TufMetadata.role == "timestamp")
            .order_by(TufMetadata.version.desc())
            .limit(1)
        ).scalar_one()
        s.delete(newest)
    client = updater(ctx, tmp_path / "c", root_of(ctx))  # same directory: it remembers
    with pytest.raises(tuf_errors.BadVersionNumberError):
        client.refresh()


def test_withdrawn_release_leaves_targets(
    live: str, ctx: AppContext, repo: dict[str, str], tmp_path: Path
) -> None:
    rid = release(live, repo, "1.0.0")
    resp = call(
        live, repo["rm1"], "POST", f"/api/v1/releases/{rid}/withdrawal", json={"reason": "bad"}
    )
    assert resp.json()["state"] == "withdrawn"
    client = updater(ctx, tmp_path / "c", root_of(ctx))
    client.refresh()
    assert client.get_targetinfo("thermo/1.0.0/fw.bin") is None


def test_online_roles_are_refreshed_before_expiry(ctx: AppContext, repo: dict[str, str]) -> None:
    with ctx.db.session() as s:
        assert ota.refresh_online_roles(s, ctx.pki.keyring) == []
        later = utcnow() + dt.timedelta(hours=13)  # past half of the timestamp's day
        assert ota.refresh_online_roles(s, ctx.pki.keyring, now=later) == ["default"]


def test_root_rotation_is_followed_by_old_clients_and_forgery_is_refused(
    live: str, ctx: AppContext, admin_token: str, repo: dict[str, str], tmp_path: Path
) -> None:
    release(live, repo, "1.0.0")
    v1 = root_of(ctx)
    seasoned = updater(ctx, tmp_path / "old", v1)
    seasoned.refresh()
    assert call(live, repo["rm1"], "POST", "/api/v1/ota/root/rotations", json={}).status_code == 403
    resp = call(live, admin_token, "POST", "/api/v1/ota/root/rotations", json={"threshold": 2})
    assert resp.json() == {"root_version": 2}
    # A device that trusted root 1 walks to root 2 and keeps updating.
    client = updater(ctx, tmp_path / "old", v1)
    client.refresh()
    assert client.get_targetinfo("thermo/1.0.0/fw.bin") is not None
    trusted = Metadata.from_bytes((tmp_path / "old" / "root.json").read_bytes())
    assert trusted.signed.version == 2
    # A root 2 signed only by the new keys is not a rotation a client accepts.
    old_keyids = set(Metadata.from_bytes(v1).signed.roles["root"].keyids)
    _rewrite_latest(
        ctx,
        "root",
        lambda d: d.update(signatures=[s for s in d["signatures"] if s["keyid"] not in old_keyids]),
    )
    fresh = updater(ctx, tmp_path / "fresh", v1)
    with pytest.raises(tuf_errors.UnsignedMetadataError):
        fresh.refresh()


def test_other_tenants_cannot_see_releases_or_fetch_targets(
    live: str,
    device_http: httpx.Client,
    ctx: AppContext,
    repo: dict[str, str],
    tmp_path: Path,
) -> None:
    import httpx

    from fleetward.identity import ca_service
    from fleetward.tenancy import service as tenancy

    rid = release(live, repo, "1.0.0")
    with ctx.db.session() as s:
        other = tenancy.create_tenant(s, name="globex", actor="test")
        ca_service.create_tenant_pki(s, ctx.pki, tenant=other, actor="test")
        _, token = tenancy.create_token(s, tenant=other, name="g", role="admin", actor="test")
    assert call(live, token, "GET", f"/api/v1/releases/{rid}").status_code == 404
    assert call(live, token, "POST", f"/api/v1/releases/{rid}/approvals").status_code == 404
    assert (
        call(live, token, "POST", f"/api/v1/releases/{rid}/withdrawal", json={}).status_code == 404
    )
    assert call(live, token, "GET", "/api/v1/releases").json()["items"] == []
    with ctx.db.read() as s:
        sha = s.execute(select(Release.sha256)).scalar_one()
    path = f"thermo/1.0.0/{sha}.fw.bin"
    assert device_http.get(f"/tuf/default/targets/{path}").content == IMAGE
    assert device_http.get(f"/tuf/globex/targets/{path}").status_code == 404
    assert device_http.get("/tuf/globex/metadata/timestamp.json").status_code == 404
    # The operator plane serves no TUF repository.
    assert httpx.get(f"{live}/tuf/default/targets/{path}").status_code == 404


def test_artifact_size_limit_keeps_nothing(tmp_path: Path) -> None:
    import io

    from fleetward.errors import PayloadTooLargeError

    blobs = LocalBlobStore(tmp_path / "blobs")
    with pytest.raises(PayloadTooLargeError):
        blobs.put(io.BytesIO(b"x" * 2049), limit=2048)
    assert list((tmp_path / "blobs" / "sha256").iterdir()) == []  # no partial upload left
    sha, length = blobs.put(io.BytesIO(b"x" * 2048), limit=2048)
    assert length == 2048 and blobs.path(sha).read_bytes() == b"x" * 2048


def test_malformed_uploads_are_refused(live: str, repo: dict[str, str]) -> None:
    bad_hw = upload(
        live, repo["rm1"], product="thermo", version="1.0.0", image=b"a", hardware="a/b"
    )
    assert bad_hw.status_code == 400 and "hardware" in bad_hw.text
    unknown = upload(live, repo["rm1"], product="nope", version="1.0.0", image=b"a")
    assert unknown.status_code == 404
    name = upload(live, repo["rm1"], product="thermo", version="1.0.0", image=b"a", filename="../x")
    assert name.status_code == 400


def test_offline_root_keys(live: str, ctx: AppContext, admin_token: str, tmp_path: Path) -> None:
    """Root keys written to a directory that then leaves the server: releases
    keep flowing without them; a rotation brings them back for one signing."""
    import os
    import shutil

    from typer.testing import CliRunner

    from fleetward.cli.main import app as cli

    runner = CliRunner()
    home = ["--home", str(ctx.settings.home)]
    env = {"FLEETWARD_ROOT_PASSPHRASE": "correct horse"}
    offline = tmp_path / "offline-root"
    out = runner.invoke(cli, [*home, "ota", "init", "--offline-root", str(offline)], env=env)
    assert out.exit_code == 0, out.output
    assert len(list(offline.glob("*.pem"))) == 3
    vault = tmp_path / "vault"
    shutil.move(offline, vault)  # gone from the server
    repo = {
        "rm1": operator(ctx, "release-manager", "rm1"),
        "rm2": operator(ctx, "release-manager", "rm2"),
    }
    call(live, admin_token, "POST", "/api/v1/ota/products/thermo", json={"threshold": 2})
    release(live, repo, "1.0.0")
    v1 = root_of(ctx)
    client = updater(ctx, tmp_path / "c", v1)
    client.refresh()
    assert client.get_targetinfo("thermo/1.0.0/fw.bin") is not None
    # Without the offline keys a rotation is refused; with them it works.
    refused = runner.invoke(cli, [*home, "ota", "rotate-root"], env=env)
    assert refused.exit_code != 0
    new_dir = tmp_path / "offline-root-2"
    rotated = runner.invoke(
        cli,
        [*home, "ota", "rotate-root", "--old-root", str(vault), "--new-root", str(new_dir)],
        env=env,
    )
    assert rotated.exit_code == 0, rotated.output
    assert len(list(new_dir.glob("*.pem"))) == 3
    follower = updater(ctx, tmp_path / "c", v1)
    follower.refresh()
    assert Metadata.from_bytes((tmp_path / "c" / "root.json").read_bytes()).signed.version == 2
    assert os.environ.get("FLEETWARD_ROOT_PASSPHRASE") is None
