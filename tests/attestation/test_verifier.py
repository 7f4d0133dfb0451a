"""The verifier over HTTPS on the device plane with real agents (software and
PKCS#11 identity keys), each presenting its certificate as TLS client."""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from fleetward.agent import client_context
from fleetward.agent._p11tls import release_token_keys
from fleetward.agent.attest import attest
from fleetward.agent.client import Server, enroll_devices, load_identity
from fleetward.agent.keystore import Keystore
from fleetward.agent.ota import Slots
from fleetward.attestation.evidence import claims, sign_evidence
from fleetward.identity import service as identity
from fleetward.keys import generate_ephemeral_signer
from fleetward.runtime.context import AppContext
from fleetward.store.db import utcnow
from fleetward.telemetry.models import Event
from tests.agent.test_agent import factory_line
from tests.broker import admin_of
from tests.hsm import SoftHsm
from tests.ota.helpers import call, operator, upload

BOOTLOADER, KERNEL, APP = b"bootloader v1", b"kernel v1", b"application 1.0.0"


class Device:
    def __init__(self, ctx: AppContext, store: Keystore, directory: Path, device_id: str) -> None:
        self.live = f"https://127.0.0.1:{ctx.settings.device_port}"  # the device plane
        self.ca = ctx.service_pki.ca_cert
        self.store, self.dir, self.id = store, directory, device_id
        (directory / "boot").mkdir(parents=True, exist_ok=True)
        (directory / "boot" / "bootloader.bin").write_bytes(BOOTLOADER)
        (directory / "boot" / "kernel.bin").write_bytes(KERNEL)
        self.slots = Slots(directory, initial_version="1.0.0")
        self.slots.image("a").write_bytes(APP)

    def attest(self, **kw: object) -> dict[str, object]:
        signer = self.store.open(load_identity(self.dir)["key_uri"])
        return attest(
            server_url=self.live, tenant="default", device_id=self.id, directory=self.dir,
            slots=self.slots, signer=signer, verify=self.tls(), **kw,  # type: ignore[arg-type]
        )  # fmt: skip

    def tls(self) -> ssl.SSLContext:
        """The device plane, as this device."""
        return client_context(self.dir, self.store, cafile=self.ca)

    def http(self) -> httpx.Client:
        return httpx.Client(verify=self.tls(), timeout=30)


def enrolled(
    live: str, admin: str, tmp: Path, device_id: str, store: Keystore, ctx: AppContext
) -> Device:
    token, batch = factory_line(live, admin, "test", [device_id])
    with Server(live, token=token) as srv:
        [r] = enroll_devices(
            srv, store, batch_id=batch, device_ids=[device_id], out_dir=tmp / "dev"
        )
    assert r.error is None
    return Device(ctx, store, tmp / "dev" / device_id, device_id)


@pytest.fixture
def released(live: str, ctx: AppContext, admin_token: str) -> None:
    """Product ``p`` release 1.0.0 with the reference measurements of the good device."""
    call(live, admin_token, "POST", "/api/v1/ota/products/p", json={"threshold": 1})
    rm = operator(ctx, "release-manager", "rm")
    meas = {
        "bootloader": hashlib.sha256(BOOTLOADER).hexdigest(),
        "kernel": hashlib.sha256(KERNEL).hexdigest(),
        "application": hashlib.sha256(APP).hexdigest(),
    }
    rid = upload(live, rm, product="p", version="1.0.0", image=APP, meas=meas).json()["id"]
    call(live, rm, "POST", f"/api/v1/releases/{rid}/approvals")


def verdicts(ctx: AppContext, type_: str = "attestation.verdict") -> list[str]:
    with ctx.db.read() as s:
        return [e.fields for e in s.execute(select(Event).where(Event.type == type_)).scalars()]


def test_pass_then_a_tampered_bootloader_fails_naming_it(
    live: str, ctx: AppContext, admin_token: str, released: None, tmp_path: Path
) -> None:
    dev = enrolled(
        live, admin_token, tmp_path, "att-1", Keystore("software", directory=tmp_path / "k"), ctx
    )
    assert dev.attest() == {"verdict": "pass", "failed": [], "swversion": "1.0.0"}
    (dev.dir / "boot" / "bootloader.bin").write_bytes(BOOTLOADER + b" implant")
    out = dev.attest()
    assert out["verdict"] == "fail" and out["failed"] == ["measurements.bootloader"]
    assert dev.attest(secure_boot=False, debug_status=0)["failed"] == [
        "measurements.bootloader", "secboot", "dbgstat",
    ]  # fmt: skip
    assert len(verdicts(ctx)) == 3


def test_unknown_firmware(
    live: str, ctx: AppContext, admin_token: str, released: None, tmp_path: Path
) -> None:
    dev = enrolled(
        live, admin_token, tmp_path, "att-2", Keystore("software", directory=tmp_path / "k"), ctx
    )
    dev.slots = Slots(tmp_path / "other", initial_version="6.6.6")
    dev.slots.image("a").write_bytes(APP)
    assert dev.attest()["verdict"] == "unknown-firmware"


def test_replayed_nonce_wrong_key_and_revoked_device_are_refused(
    live: str, ctx: AppContext, admin_token: str, released: None, tmp_path: Path
) -> None:
    dev = enrolled(
        live, admin_token, tmp_path, "att-3", Keystore("software", directory=tmp_path / "k"), ctx
    )
    base = f"{dev.live}/api/v1/attestation/default/att-3"
    http = dev.http()
    nonce = http.post(f"{base}/nonce").json()["nonce"]
    import base64

    raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
    signer = dev.store.open(load_identity(dev.dir)["key_uri"])
    body = claims(
        nonce=raw, device_id="att-3", version="1.0.0", measurements={}, secure_boot=True,
        debug_status=3, boot_count=1, now=utcnow(),
    )  # fmt: skip
    token = sign_evidence(body, signer)
    assert http.post(f"{base}/evidence", json={"evidence": token}).status_code == 200
    replay = http.post(f"{base}/evidence", json={"evidence": token})
    assert replay.status_code == 422 and "nonce" in replay.json()["detail"]
    fresh = http.post(f"{base}/nonce").json()["nonce"]
    body["eat_nonce"] = fresh
    stranger = sign_evidence(body, generate_ephemeral_signer())
    wrong = http.post(f"{base}/evidence", json={"evidence": stranger})
    assert wrong.status_code == 422 and "signature" in wrong.json()["detail"]
    # A device asks only for itself; without its certificate, nothing at all.
    other = http.post(f"{dev.live}/api/v1/attestation/default/nobody/nonce")
    assert other.status_code == 403, other.text
    anonymous = ssl.create_default_context(cafile=str(dev.ca))
    assert httpx.post(f"{base}/nonce", verify=anonymous).status_code == 401
    # Not on the operator plane.
    assert httpx.post(f"{live}/api/v1/attestation/default/att-3/nonce").status_code == 404
    body["eat_nonce"] = http.post(f"{base}/nonce").json()["nonce"]
    admin = admin_of(ctx)
    with ctx.db.session() as s:
        identity.revoke_device(s, admin, "att-3", reason="keyCompromise")
    # Revoked: the certificate no longer authenticates (checked against the
    # database on every request, before the verifier sees the evidence).
    revoked = http.post(f"{base}/evidence", json={"evidence": sign_evidence(body, signer)})
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"], revoked.text
    http.close()
    assert len(verdicts(ctx, "attestation.refused")) == 2


@pytest.mark.hsm
def test_evidence_signed_on_the_token(
    live: str, ctx: AppContext, admin_token: str, released: None, softhsm: SoftHsm, tmp_path: Path
) -> None:
    store = Keystore(
        "pkcs11", directory=tmp_path / "k", token_label=softhsm.token_label, pin=softhsm.pin
    )
    dev = enrolled(live, admin_token, tmp_path, "att-hw", store, ctx)
    try:
        assert dev.attest()["verdict"] == "pass"
    finally:
        release_token_keys()  # its TLS key holds a login on the session-wide test token


def test_withdrawn_release_fails_and_pending_vouches_for_nothing(
    live: str, ctx: AppContext, admin_token: str, released: None, tmp_path: Path
) -> None:
    dev = enrolled(
        live, admin_token, tmp_path, "att-w", Keystore("software", directory=tmp_path / "k"), ctx
    )
    rm = operator(ctx, "release-manager", "rm2")
    [rel] = call(live, rm, "GET", "/api/v1/releases").json()["items"]
    call(live, rm, "POST", f"/api/v1/releases/{rel['id']}/withdrawal", json={"reason": "CVE"})
    out = dev.attest()
    assert out["verdict"] == "fail" and out["failed"] == ["swversion"]
    upload(live, rm, product="p", version="1.1.0", image=b"new")  # pending, not signed
    dev.slots = Slots(tmp_path / "other", initial_version="1.1.0")
    dev.slots.image("a").write_bytes(b"new")
    assert dev.attest()["verdict"] == "unknown-firmware"


def test_spent_nonces_are_pruned(ctx: AppContext, tmp_path: Path) -> None:
    import datetime as dt

    from fleetward.attestation import service as verifier
    from tests.broker import make_device

    make_device(ctx, tmp_path, "n1")
    with ctx.db.session() as s:
        verifier.issue_nonce(s, "default", "n1")
    with ctx.db.session() as s:
        assert verifier.prune_nonces(s) == 0  # still usable
        later = utcnow() + dt.timedelta(minutes=5)
        assert verifier.prune_nonces(s, now=later) == 1
