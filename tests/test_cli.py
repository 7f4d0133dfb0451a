"""The ``fleetward`` command end to end, including the offline-root flow."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

from fleetward.cli.main import app
from fleetward.errors import AttestationError, CertificateError, ConflictError
from fleetward.tenancy.roles import ENVIRONMENTS
from tests.helpers import csr_pem, new_key


def fw(home: Path, *args: str) -> str:
    result = CliRunner().invoke(app, ["--home", str(home), *args], catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def test_init_prints_token_once_and_refuses_twice(home: Path) -> None:
    out = fw(home, "init")
    token = out.strip().splitlines()[-1]
    assert token.startswith("fwt_")
    with pytest.raises(ConflictError, match="already initialised"):
        fw(home, "init")
    assert token not in fw(home, "token", "list")
    assert "default" in fw(home, "tenant", "list")


def test_offline_root_issuing_ca_rotation(home: Path, tmp_path: Path) -> None:
    offline = tmp_path / "offline"
    fw(home, "init", "--offline-root", str(offline))
    root_key = next(offline.glob("*.pem"))
    (tmp_path / "root.pem").write_text(fw(home, "ca", "export", "1"))
    assert "offline:" in fw(home, "ca", "list")

    fw(home, "ca", "issuing-csr", "--env", "production", "--out", str(tmp_path / "new.csr"))
    fw(
        home, "ca", "sign-csr", "--root-key", str(root_key),
        "--root-cert", str(tmp_path / "root.pem"), "--csr", str(tmp_path / "new.csr"),
        "--env", "production", "--out", str(tmp_path / "new.pem"),
    )  # fmt: skip
    # The pending CA is the newest: root, one issuing CA per environment, then it.
    pending = str(1 + len(ENVIRONMENTS) + 1)
    # A certificate for some other key (the test CA's) is refused on import.
    (tmp_path / "test-ca.pem").write_text(fw(home, "ca", "export", "2"))
    with pytest.raises(CertificateError, match="not for this issuing CA's key"):
        fw(home, "ca", "import", pending, "--cert", str(tmp_path / "test-ca.pem"))
    fw(home, "ca", "import", pending, "--cert", str(tmp_path / "new.pem"))
    listing = fw(home, "ca", "list")
    assert "retired" in listing

    (tmp_path / "d.csr").write_bytes(csr_pem(new_key(), "cli-dev"))
    enroll = ["device", "enroll", "cli-dev", "--csr", str(tmp_path / "d.csr")]
    with pytest.raises(AttestationError, match="production refuses"):
        fw(home, *enroll)
    assert "ALLOWED" in fw(home, "tenant", "policy", "--allow-unattested-keys-in-production")
    fw(
        home,
        "device",
        "enroll",
        "cli-dev",
        "--csr",
        str(tmp_path / "d.csr"),
        "--out",
        str(tmp_path / "d.pem"),
    )
    leaf = x509.load_pem_x509_certificate((tmp_path / "d.pem").read_bytes())
    leaf.verify_directly_issued_by(
        x509.load_pem_x509_certificate((tmp_path / "new.pem").read_bytes())
    )
    assert '"state": "active"' in fw(home, "device", "show", "cli-dev", "--json")
    serial = format(leaf.serial_number, "x")
    fw(home, "cert", "revoke", serial, "--reason", "keyCompromise")
    assert "1 entries" in fw(home, "crl", "publish")
    fw(home, "audit", "checkpoint")
    assert "audit log OK" in fw(home, "audit", "verify")
