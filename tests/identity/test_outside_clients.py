"""Outside clients against a live server: openssl verify/ocsp, and EST with curl.

The server runs in-process on a loopback port (uvicorn in a thread) with a
fast CRL publication interval; the clients are the real ``openssl`` and
``curl`` commands.
"""

from __future__ import annotations

import base64
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.conftest import CRL_INTERVAL

pytestmark = pytest.mark.openssl


def run(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, input=input, capture_output=True, timeout=30, check=False)


def device_csr(tmp: Path, name: str) -> tuple[Path, Path]:
    key, csr = tmp / f"{name}.key", tmp / f"{name}.csr"
    out = run(
        "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", str(key), "-subj", f"/CN={name}", "-out", str(csr),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return key, csr


def chain_files(base: str, token: str, tmp: Path) -> tuple[Path, Path, int]:
    cas = httpx.get(f"{base}/api/v1/cas", headers={"Authorization": f"Bearer {token}"}).json()[
        "items"
    ]
    root = next(c for c in cas if c["kind"] == "root")
    prod = next(c for c in cas if c["environment"] == "production")
    (tmp / "issuer.pem").write_text(prod["certificate"])
    (tmp / "chain.pem").write_text(prod["certificate"] + root["certificate"])
    return tmp / "issuer.pem", tmp / "chain.pem", prod["id"]


def crl_pem(base: str, ca_id: int) -> str:
    der = httpx.get(f"{base}/crl/{ca_id}.crl").content
    crl = x509.load_der_x509_crl(der)
    return crl.public_bytes(Encoding.PEM).decode()


def test_openssl_verify_crl_check_and_ocsp(live: str, admin_token: str, tmp_path: Path) -> None:
    _, csr = device_csr(tmp_path, "dev-ossl")
    resp = httpx.post(
        f"{live}/api/v1/devices/dev-ossl/certificates",
        json={"csr": csr.read_text()},
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert resp.status_code == 201, resp.text
    leaf = tmp_path / "leaf.pem"
    leaf.write_text(resp.json()["certificate"])
    serial = resp.json()["serial"]
    issuer, chain, ca_id = chain_files(live, admin_token, tmp_path)
    bundle = tmp_path / "bundle.pem"

    def openssl_verify() -> subprocess.CompletedProcess[bytes]:
        bundle.write_text(chain.read_text() + crl_pem(live, ca_id))
        return run("openssl", "verify", "-crl_check", "-CAfile", str(bundle), str(leaf))

    def openssl_ocsp() -> str:
        out = run(
            "openssl", "ocsp", "-issuer", str(issuer), "-cert", str(leaf),
            "-url", f"{live}/ocsp", "-CAfile", str(chain),
        )  # fmt: skip
        assert b"Response verify OK" in out.stderr + out.stdout, out.stderr
        return out.stdout.decode()

    ok = openssl_verify()
    assert ok.returncode == 0 and b": OK" in ok.stdout, ok.stdout + ok.stderr
    assert f"{leaf}: good" in openssl_ocsp()

    resp = httpx.post(
        f"{live}/api/v1/certificates/{serial}/revocation",
        json={"reason": "keyCompromise"},
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert resp.status_code == 200
    # OCSP answers from the database: revoked at once.
    assert f"{leaf}: revoked" in openssl_ocsp()
    # The CRL follows within the publication interval.
    deadline = time.monotonic() + 20 * CRL_INTERVAL
    while True:
        out = openssl_verify()
        if out.returncode != 0:
            break
        assert time.monotonic() < deadline, "CRL never listed the revoked certificate"
        time.sleep(CRL_INTERVAL / 2)
    assert b"certificate revoked" in out.stdout + out.stderr


def test_est_simpleenroll_and_reenroll_with_curl(
    live: str, admin_token: str, tmp_path: Path
) -> None:
    _key, csr = device_csr(tmp_path, "dev-est")
    der = run("openssl", "req", "-in", str(csr), "-outform", "DER").stdout
    (tmp_path / "csr.b64").write_bytes(base64.encodebytes(der))

    cacerts = run("curl", "-sf", f"{live}/.well-known/est/cacerts")
    assert cacerts.returncode == 0
    p7 = base64.b64decode(cacerts.stdout)
    chain = run("openssl", "pkcs7", "-inform", "DER", "-print_certs", input=p7)
    assert chain.returncode == 0
    (tmp_path / "chain.pem").write_bytes(chain.stdout)

    def est(op: str, *headers: str) -> bytes:
        out = run(
            "curl", "-sf", "-u", f"device:{admin_token}", "-H", "Content-Type: application/pkcs10",
            *[x for h in headers for x in ("-H", h)],
            "--data-binary", f"@{tmp_path / 'csr.b64'}", f"{live}/.well-known/est/{op}",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        certs = run(
            "openssl", "pkcs7", "-inform", "DER", "-print_certs", input=base64.b64decode(out.stdout)
        )
        assert certs.returncode == 0
        return certs.stdout

    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(est("simpleenroll"))
    ok = run("openssl", "verify", "-CAfile", str(tmp_path / "chain.pem"), str(leaf))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert b"CN=dev-est" in run(
        "openssl", "x509", "-in", str(leaf), "-noout", "-subject"
    ).stdout.replace(b" ", b"")

    leaf_der = run("openssl", "x509", "-in", str(leaf), "-outform", "DER").stdout
    renewed = tmp_path / "renewed.pem"
    renewed.write_bytes(
        est("simplereenroll", f"X-Fleetward-Client-Cert: {base64.b64encode(leaf_der).decode()}")
    )
    ok = run("openssl", "verify", "-CAfile", str(tmp_path / "chain.pem"), str(renewed))
    assert ok.returncode == 0
    assert renewed.read_bytes() != leaf.read_bytes()


def test_est_refusals(live: str, admin_token: str, tmp_path: Path) -> None:
    _, csr = device_csr(tmp_path, "dev-bad")
    der = run("openssl", "req", "-in", str(csr), "-outform", "DER").stdout
    body = base64.encodebytes(der)
    url = f"{live}/.well-known/est/simpleenroll"
    assert httpx.post(url, content=body).status_code == 401
    assert httpx.post(url, content=body, auth=("d", "fwt_0000000000000000_nope")).status_code == 401
    resp = httpx.post(url, content=b"%%% not base64", auth=("d", admin_token))
    assert resp.status_code == 400 and resp.headers["content-type"] == "application/problem+json"
    assert httpx.post(f"{live}/.well-known/est/simplereenroll", content=body).status_code == 400
    assert httpx.get(f"{live}/.well-known/est/nowhere.staging/cacerts").status_code == 404
