"""An outside client, the ``openssl`` command, accepts what the helpers sign."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetward.keys import Signer, sign_certificate, sign_crl, sign_csr, sign_ocsp_response

from ._pki import crl_builder, csr_builder, leaf_builder, ocsp_builder, root_builder

pytestmark = [
    pytest.mark.openssl,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed"),
]


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``openssl`` and return the result, whatever its exit code."""
    return subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, check=False, timeout=30
    )


def write_pem(path: Path, obj: x509.Certificate | x509.CertificateRevocationList) -> Path:
    path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    return path


def pki(signer: Signer, tmp_path: Path) -> tuple[x509.Certificate, x509.Certificate, Path, Path]:
    root = sign_certificate(root_builder(signer.public_key()), signer)
    leaf = sign_certificate(leaf_builder(root), signer)
    return (
        root,
        leaf,
        write_pem(tmp_path / "root.pem", root),
        write_pem(tmp_path / "leaf.pem", leaf),
    )


def test_chain_verifies(any_signer: Signer, tmp_path: Path) -> None:
    _, _, root_pem, leaf_pem = pki(any_signer, tmp_path)
    result = openssl("verify", "-x509_strict", "-CAfile", root_pem, leaf_pem)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{leaf_pem}: OK"
    result = openssl("verify", "-x509_strict", "-CAfile", root_pem, root_pem)
    assert result.returncode == 0, result.stderr


def test_crl_is_honoured(any_signer: Signer, tmp_path: Path) -> None:
    root, leaf, root_pem, leaf_pem = pki(any_signer, tmp_path)
    clean = write_pem(tmp_path / "clean.crl", sign_crl(crl_builder(root), any_signer))
    revoking = write_pem(
        tmp_path / "revoking.crl",
        sign_crl(crl_builder(root, revoked_serials=(leaf.serial_number,)), any_signer),
    )
    ok = openssl("verify", "-crl_check", "-CAfile", root_pem, "-CRLfile", clean, leaf_pem)
    assert ok.returncode == 0, ok.stderr
    revoked = openssl("verify", "-crl_check", "-CAfile", root_pem, "-CRLfile", revoking, leaf_pem)
    assert revoked.returncode != 0
    assert "certificate revoked" in revoked.stdout + revoked.stderr


def test_csr_self_signature(any_signer: Signer, tmp_path: Path) -> None:
    path = tmp_path / "device.csr"
    path.write_bytes(sign_csr(csr_builder(), any_signer).public_bytes(serialization.Encoding.PEM))
    result = openssl("req", "-in", path, "-verify", "-noout")
    assert result.returncode == 0, result.stderr
    assert "verify OK" in result.stdout + result.stderr


def test_ocsp_response(any_signer: Signer, tmp_path: Path) -> None:
    root, leaf, root_pem, leaf_pem = pki(any_signer, tmp_path)
    response = sign_ocsp_response(ocsp_builder(leaf, root), any_signer)
    der = tmp_path / "response.der"
    der.write_bytes(response.public_bytes(serialization.Encoding.DER))
    # -sha256: the response identifies the certificate by SHA-256 CertID.
    result = openssl(
        "ocsp",
        "-respin",
        der,
        "-issuer",
        root_pem,
        "-sha256",
        "-cert",
        leaf_pem,
        "-CAfile",
        root_pem,
        "-no_nonce",
    )
    assert result.returncode == 0, result.stderr
    assert "Response verify OK" in result.stdout + result.stderr
    assert f"{leaf_pem}: good" in result.stdout


@pytest.mark.hsm
def test_tampered_leaf_is_rejected(hsm_signer: Signer, tmp_path: Path) -> None:
    _, leaf, root_pem, _ = pki(hsm_signer, tmp_path)
    der = bytearray(leaf.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # inside the signature value
    tampered = write_pem(tmp_path / "tampered.pem", x509.load_der_x509_certificate(bytes(der)))
    result = openssl("verify", "-CAfile", root_pem, tampered)
    assert result.returncode != 0
    assert "signature failure" in result.stdout + result.stderr
