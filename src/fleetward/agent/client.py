"""The agent's enrollment and renewal, over the fleetward API's two planes.

Enrollment is a station's action with an operator token, on the operator
plane; renewal is the device's own, on the device plane over HTTPS with the
device certificate as TLS client certificate (:func:`device_server`), the
service CA (``fleetward serve`` prints its path) as trust anchor.

A device (or a factory station acting for many) generates its identity key
in its keystore, makes a CSR signed by that key, asks its secure element for
an attestation statement over a server nonce, and enrolls in its batch. The
result is kept in the device's directory (``identity.json``, ``cert.pem``,
``ca.pem``); the private key stays in the keystore. Renewal proves
possession with a CSR from the same key and replaces the certificate only
once the new one is saved. A renewal onto a new key (``new_key``) also
sends the current key's proof and, when the key lives in a secure element,
the chip's attestation of the new key with the nonce bound to the CSR
(:func:`fleetward.identity.renewal.renewal_attestation_nonce`): production
refuses a new key without one.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import secrets
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from fleetward.agent.keystore import Keystore, make_csr
from fleetward.agent.secure_element import SecureElement
from fleetward.errors import InvalidInputError, ServerRefusedError
from fleetward.identity.profile import renewal_attestation_nonce, renewal_proof_message
from fleetward.keys import Signer

__all__ = [
    "Enrolled",
    "Server",
    "ServerRefusedError",
    "device_server",
    "enroll_devices",
    "load_identity",
    "renew",
    "write_durably",
]

IDENTITY_FILE = "identity.json"
CHUNK = 500  # devices per batch request from a station (the server takes up to 1,000)


class Server:
    """A fleetward server as the agent sees it."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        verify: ssl.SSLContext | bool = True,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            headers=headers,
            timeout=timeout,
            transport=transport,
            verify=verify,
        )
        self._issuers: dict[int, str] = {}  # CA certificates enrollment answers carried

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ServerRefusedError(f"cannot reach the server: {exc}", status=0) from exc
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            raise ServerRefusedError(str(detail), status=resp.status_code)
        return (
            resp.json()
            if resp.headers.get("content-type", "").startswith("application/json")
            else resp.text
        )

    def nonces(self, count: int) -> list[bytes]:
        """Fresh attestation nonces."""
        out: list[bytes] = []
        while len(out) < count:
            n = min(1000, count - len(out))
            body = self._call("POST", "/api/v1/provisioning/nonces", params={"count": n})
            out.extend(base64.urlsafe_b64decode(v) for v in body["nonces"])
        return out

    def provision(self, batch_id: int, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Enroll items in a batch; one result per item."""
        body = self._call(
            "POST", f"/api/v1/provisioning/batches/{batch_id}/enroll", json={"items": items}
        )
        issuers = body.get("issuers") or {}
        self._issuers.update({int(k): str(v) for k, v in issuers.items()})
        return list(body["items"])

    def ca_pem(self, ca_id: int) -> str:
        """An issuing CA certificate: the one an enrollment answer carried
        (the operator plane), else ``/ca/{id}.crt`` (the device plane)."""
        known = self._issuers.get(ca_id)
        if known is not None:
            return known
        return str(self._call("GET", f"/ca/{ca_id}.crt"))

    def renew(
        self,
        certificate_pem: str,
        csr_pem: bytes,
        *,
        proof: bytes | None = None,
        attestation: dict[str, object] | None = None,
    ) -> dict[str, Any]:
        """Renew: with the same key, or a new one with ``proof`` (and ``attestation``)."""
        body: dict[str, Any] = {"certificate": certificate_pem, "csr": csr_pem.decode()}
        if proof is not None:
            body["proof"] = base64.b64encode(proof).decode()
        if attestation is not None:
            body["attestation"] = attestation
        return dict(self._call("POST", "/api/v1/renew", json=body))

    def batch(self, batch_id: int) -> dict[str, Any]:
        """A batch the token can see (the list is paged: follow ``next``)."""
        params: dict[str, Any] = {"limit": 1000}
        while True:
            page = self._call("GET", "/api/v1/provisioning/batches", params=params)
            for b in page["items"]:
                if b["id"] == batch_id:
                    return dict(b)
            if page["next"] is None:
                raise ServerRefusedError(f"batch {batch_id} not found", status=404)
            params["cursor"] = page["next"]


def device_server(url: str, *, directory: Path, keystore: Keystore, ca: Path) -> Server:
    """The device plane at ``url`` as the device enrolled in ``directory``:
    HTTPS trusting ``ca`` (the service CA), its certificate as TLS client
    certificate, its key from ``keystore``."""
    from fleetward.agent._tls import client_context

    return Server(url, verify=client_context(directory, keystore, cafile=ca))


@dataclass(frozen=True)
class Enrolled:
    """One device's outcome at the station."""

    device_id: str
    serial: str | None
    fingerprint: str | None
    key_origin: str | None
    error: str | None


def write_durably(path: Path, data: str | bytes, *, sync_dir: bool = False) -> None:
    """Replace ``path`` atomically with ``data``, synced to disk (and its
    directory entry too, with ``sync_dir``)."""
    tmp = path.with_name(f".{path.name}.new")
    with tmp.open("wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    if sync_dir:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _save(directory: Path, identity: dict[str, Any], cert_pem: str, ca_pem: str) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Each file is written to a temporary name, synced and renamed, and the
    # directory synced last: once the server has issued a certificate, a
    # crash leaves either the old identity or the new one, never a device
    # without the certificate it was given.
    write_durably(directory / "cert.pem", cert_pem)
    write_durably(directory / "ca.pem", ca_pem)
    write_durably(directory / IDENTITY_FILE, json.dumps(identity, indent=2))
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def enroll_devices(
    server: Server,
    keystore: Keystore,
    *,
    batch_id: int,
    device_ids: Sequence[str],
    out_dir: Path,
    chips: Sequence[SecureElement] | None = None,
    on_progress: Any = None,
) -> list[Enrolled]:
    """Generate keys, make CSRs and statements, and enroll ``device_ids`` in chunks.

    Each device's identity is saved under ``out_dir / device_id`` as soon as
    its chunk is accepted.
    """
    if chips is not None and len(chips) != len(device_ids):
        raise InvalidInputError("one secure element per device")
    results: list[Enrolled] = []
    ca_cache: dict[int, str] = {}
    for start in range(0, len(device_ids), CHUNK):
        ids = device_ids[start : start + CHUNK]
        signers: list[Signer] = [keystore.generate(d) for d in ids]
        nonces = server.nonces(len(ids)) if chips is not None else [b""] * len(ids)
        items: list[dict[str, Any]] = []
        for i, (device_id, signer) in enumerate(zip(ids, signers, strict=True)):
            item: dict[str, Any] = {
                "device_id": device_id,
                "csr": make_csr(signer, device_id).decode(),
            }
            if chips is not None:
                chip = chips[start + i]
                item["attestation"] = chip.statement(
                    nonce=nonces[i], identity_public_key=signer.public_key()
                )
            items.append(item)
        answers = server.provision(batch_id, items)
        for device_id, signer, answer in zip(ids, signers, answers, strict=True):
            cert = answer.get("certificate")
            if cert is None:
                problem = answer.get("problem") or {}
                results.append(Enrolled(device_id, None, None, None, str(problem.get("detail"))))
                continue
            ca_id = int(cert["ca_id"])
            if ca_id not in ca_cache:
                ca_cache[ca_id] = server.ca_pem(ca_id)
            _save(
                out_dir / device_id,
                {
                    "device_id": device_id,
                    "keystore": keystore.kind,
                    "key_uri": signer.uri,
                    "key_origin": answer.get("key_origin"),
                    "serial": cert["serial"],
                },
                cert["certificate"],
                ca_cache[ca_id],
            )
            results.append(
                Enrolled(
                    device_id, cert["serial"], cert["fingerprint"], answer.get("key_origin"), None
                )
            )
        if on_progress is not None:
            on_progress(len(ids))
    return results


def load_identity(directory: Path) -> dict[str, Any]:
    """A device's saved identity."""
    path = directory / IDENTITY_FILE
    if not path.exists():
        raise InvalidInputError(f"{directory} holds no enrolled identity")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def renew(
    server: Server,
    keystore: Keystore,
    directory: Path,
    *,
    within: dt.timedelta,
    now: dt.datetime | None = None,
    new_key: bool = False,
    chip: SecureElement | None = None,
) -> bool:
    """Renew the certificate if it expires within ``within``; whether it did.

    Args:
        new_key: move to a new identity key, generated in ``keystore``; the
            current key signs the proof. The old key is left in the keystore
            (its certificate stays valid until it expires or is revoked).
        chip: the secure element holding the new key; it attests the new key
            for this renewal. Ignored with the same key, whose origin is kept.
    """
    identity = load_identity(directory)
    cert_pem = (directory / "cert.pem").read_text()
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    now = now or dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc - now > within:
        return False
    signer = keystore.open(identity["key_uri"])
    if not new_key:
        answer = server.renew(cert_pem, make_csr(signer, identity["device_id"]))
    else:
        # A fresh name: the keystore refuses to overwrite, and the current key
        # must survive until the new certificate is saved.
        fresh = keystore.generate(f"{identity['device_id']}.{secrets.token_hex(4)}")
        csr_pem = make_csr(fresh, identity["device_id"])
        csr_der = x509.load_pem_x509_csr(csr_pem).public_bytes(Encoding.DER)
        statement = (
            chip.statement(
                nonce=renewal_attestation_nonce(csr_der), identity_public_key=fresh.public_key()
            )
            if chip is not None
            else None
        )
        answer = server.renew(
            cert_pem,
            csr_pem,
            proof=signer.sign(renewal_proof_message(csr_der)),
            attestation=statement,
        )
        identity["key_uri"] = fresh.uri
    identity["serial"] = answer["serial"]
    if answer.get("key_origin") is not None:
        identity["key_origin"] = answer["key_origin"]
    _save(directory, identity, answer["certificate"], (directory / "ca.pem").read_text())
    return True
