"""Outside clients against a live server: openssl verify/ocsp/s_client, and
EST with curl.

The server runs in-process on loopback ports (uvicorn in a thread, both
planes) with a fast CRL publication interval; the clients are the real
``openssl`` and ``curl`` commands. OCSP, CRLs and EST are on the device
plane: HTTPS, trusting fleetward's service CA (``service_ca``), and EST's
``simplereenroll`` authenticated by the device's TLS client certificate.
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


def crl_pem(device_http: httpx.Client, ca_id: int) -> str:
    der = device_http.get(f"/crl/{ca_id}.crl").content
    crl = x509.load_der_x509_crl(der)
    return crl.public_bytes(Encoding.PEM).decode()


def test_openssl_verify_crl_check_and_ocsp(
    live: str,
    live_device: str,
    service_ca: Path,
    device_http: httpx.Client,
    admin_token: str,
    tmp_path: Path,
) -> None:
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
    # openssl ocsp checks the TLS server and the OCSP response with one
    # store: the service CA (the device plane) and the device chain.
    anchors = tmp_path / "anchors.pem"
    anchors.write_text(chain.read_text() + service_ca.read_text())

    def openssl_verify() -> subprocess.CompletedProcess[bytes]:
        bundle.write_text(chain.read_text() + crl_pem(device_http, ca_id))
        return run("openssl", "verify", "-crl_check", "-CAfile", str(bundle), str(leaf))

    def openssl_ocsp() -> str:
        out = run(
            "openssl", "ocsp", "-issuer", str(issuer), "-cert", str(leaf),
            "-url", f"{live_device}/ocsp", "-CAfile", str(anchors),
        )  # fmt: skip
        assert b"Response verify OK" in out.stderr + out.stdout, out.stderr
        return out.stdout.decode()

    ok = openssl_verify()
    assert ok.returncode == 0 and b": OK" in ok.stdout, ok.stdout + ok.stderr
    assert f"{leaf}: good" in openssl_ocsp()
    # Neither is served on the operator plane.
    assert httpx.get(f"{live}/crl/{ca_id}.crl").status_code == 404
    assert httpx.post(f"{live}/ocsp", content=b"").status_code == 404

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


def test_openssl_s_client_sees_the_service_certificate_and_refuses_a_stranger(
    live_device: str, service_ca: Path, tmp_path: Path
) -> None:
    port = live_device.rsplit(":", 1)[1]
    connect = ("openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(service_ca))
    ok = run(*connect, "-verify_return_error", "-verify_ip", "127.0.0.1", input=b"")
    assert ok.returncode == 0 and b"Verify return code: 0 (ok)" in ok.stdout, ok.stdout
    # A client certificate of a CA fleetward does not trust fails the handshake.
    key, cert = tmp_path / "stranger.key", tmp_path / "stranger.pem"
    made = run(
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", str(key), "-subj", "/CN=stranger", "-days", "1", "-out", str(cert),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    stranger = (*connect, "-cert", str(cert), "-key", str(key), "-ign_eof")
    # TLS 1.3: the server refuses after the client's Finished, so the request gets no answer.
    refused = run(*stranger, input=request)
    assert b"HTTP/1.1" not in refused.stdout, refused.stdout
    # TLS 1.2: the server ends the handshake (the client never finishes it).
    refused = run(*stranger, "-tls1_2", input=request)
    assert refused.returncode != 0 and b"HTTP/1.1" not in refused.stdout, refused.stdout
    assert b"SSL routines" in refused.stderr, refused.stderr
    # The same request without a certificate is answered.
    answered = run(*connect, "-ign_eof", input=request)
    assert b"HTTP/1.1 200" in answered.stdout, answered.stdout


def test_est_simpleenroll_and_reenroll_with_curl(
    live: str, live_device: str, service_ca: Path, admin_token: str, tmp_path: Path
) -> None:
    key, csr = device_csr(tmp_path, "dev-est")
    der = run("openssl", "req", "-in", str(csr), "-outform", "DER").stdout
    (tmp_path / "csr.b64").write_bytes(base64.encodebytes(der))
    tls = ("--cacert", str(service_ca))

    cacerts = run("curl", "-sf", *tls, f"{live_device}/.well-known/est/cacerts")
    assert cacerts.returncode == 0, cacerts.stderr
    p7 = base64.b64decode(cacerts.stdout)
    chain = run("openssl", "pkcs7", "-inform", "DER", "-print_certs", input=p7)
    assert chain.returncode == 0
    (tmp_path / "chain.pem").write_bytes(chain.stdout)
    # EST is not on the operator plane.
    assert run("curl", "-sf", f"{live}/.well-known/est/cacerts").returncode != 0

    def est(op: str, *options: str) -> bytes:
        out = run(
            "curl", "-sf", *tls, "-H", "Content-Type: application/pkcs10", *options,
            "--data-binary", f"@{tmp_path / 'csr.b64'}", f"{live_device}/.well-known/est/{op}",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        certs = run(
            "openssl", "pkcs7", "-inform", "DER", "-print_certs", input=base64.b64decode(out.stdout)
        )
        assert certs.returncode == 0
        return certs.stdout

    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(est("simpleenroll", "-u", f"device:{admin_token}"))
    ok = run("openssl", "verify", "-CAfile", str(tmp_path / "chain.pem"), str(leaf))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert b"CN=dev-est" in run(
        "openssl", "x509", "-in", str(leaf), "-noout", "-subject"
    ).stdout.replace(b" ", b"")

    # RFC 7030 4.2.2: the TLS client certificate is the one renewed.
    renewed = tmp_path / "renewed.pem"
    renewed.write_bytes(est("simplereenroll", "--cert", str(leaf), "--key", str(key)))
    ok = run("openssl", "verify", "-CAfile", str(tmp_path / "chain.pem"), str(renewed))
    assert ok.returncode == 0
    assert renewed.read_bytes() != leaf.read_bytes()


def test_est_refusals(
    live: str,
    live_device: str,
    device_http: httpx.Client,
    admin_token: str,
    tmp_path: Path,
) -> None:
    _key, csr = device_csr(tmp_path, "dev-bad")
    der = run("openssl", "req", "-in", str(csr), "-outform", "DER").stdout
    body = base64.encodebytes(der)
    url = "/.well-known/est/simpleenroll"
    assert device_http.post(url, content=body).status_code == 401
    nope = ("d", "fwt_0000000000000000_nope")
    assert device_http.post(url, content=body, auth=nope).status_code == 401
    resp = device_http.post(url, content=b"%%% not base64", auth=("d", admin_token))
    assert resp.status_code == 400 and resp.headers["content-type"] == "application/problem+json"
    # simplereenroll without a TLS client certificate: refused, whatever else comes.
    reenroll = "/.well-known/est/simplereenroll"
    resp = device_http.post(reenroll, content=body)
    assert resp.status_code == 401, resp.text
    assert resp.json()["type"].endswith("client-certificate-required")
    resp = device_http.post(reenroll, content=body, auth=("d", admin_token))
    assert resp.status_code == 401 and "not a device credential" in resp.json()["detail"]
    # A forged certificate header from an address that is no trusted proxy.
    resp = device_http.post(
        reenroll, content=body, headers={"X-Fleetward-Client-Cert": base64.b64encode(der).decode()}
    )
    assert resp.status_code == 401, resp.text
    assert resp.json()["type"].endswith("untrusted-certificate-header")
    assert device_http.get("/.well-known/est/nowhere.staging/cacerts").status_code == 404
    # And nothing of EST on the operator plane, with a token or without.
    assert httpx.post(f"{live}{url}", content=body, auth=("d", admin_token)).status_code == 404
