"""The agent as attester: measure the boot stages, sign EAT evidence, send it.

The boot stages are files in the device directory: ``boot/bootloader.bin``
and ``boot/kernel.bin`` (what the simulated ROM measures), and the image of
the active A/B slot (the application). A tampered file shows up as a failed
``measurements.<stage>`` claim at the verifier.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ssl
from pathlib import Path
from typing import Any

import httpx

from fleetward.agent.ota import Slots
from fleetward.attestation.evidence import claims, sign_evidence
from fleetward.keys import Signer

__all__ = ["attest", "measure"]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def measure(directory: Path, slots: Slots) -> dict[str, str]:
    """SHA-256 of each boot stage as it is on disk now."""
    boot = directory / "boot"
    application = slots.image(slots.active)
    return {
        "bootloader": _digest(boot / "bootloader.bin"),
        "kernel": _digest(boot / "kernel.bin"),
        "application": _digest(application) if application.exists() else "0" * 64,
    }


def attest(
    *,
    server_url: str,
    tenant: str,
    device_id: str,
    directory: Path,
    slots: Slots,
    signer: Signer,
    secure_boot: bool = True,
    debug_status: int = 3,
    boot_count: int = 1,
    client: httpx.Client | None = None,
    verify: ssl.SSLContext | None = None,
) -> dict[str, Any]:
    """Fetch a nonce, sign evidence over this boot, and return the verdict.

    The verifier is on the device plane: ``client`` (or a client made with
    ``verify``, a TLS context that presents this device's certificate, see
    :func:`fleetward.agent.client.device_server`) authenticates the device,
    and the verifier takes a nonce request and evidence from the device itself only.

    Raises:
        httpx.HTTPStatusError: the verifier refused the evidence (422) or the nonce.
    """
    http = client or httpx.Client(timeout=30, verify=verify if verify is not None else True)
    base = f"{server_url.rstrip('/')}/api/v1/attestation/{tenant}/{device_id}"
    try:
        resp = http.post(f"{base}/nonce")
        resp.raise_for_status()
        text = resp.json()["nonce"]
        nonce = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        payload = claims(
            nonce=nonce,
            device_id=device_id,
            version=slots.installed_version,
            measurements=measure(directory, slots),
            secure_boot=secure_boot,
            debug_status=debug_status,
            boot_count=boot_count,
            now=dt.datetime.now(dt.UTC),
        )
        resp = http.post(f"{base}/evidence", json={"evidence": sign_evidence(payload, signer)})
        resp.raise_for_status()
        verdict: dict[str, Any] = resp.json()
        return verdict
    finally:
        if client is None:
            http.close()
