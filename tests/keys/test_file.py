"""File-backed signers: encrypted at rest, 0600, never overwritten, clear errors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fleetward.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    SignatureError,
)
from fleetward.keys import (
    ALGORITHMS,
    generate_ephemeral_signer,
    generate_file_signer,
    open_signer,
    verify_signature,
)
from fleetward.keys._file import MAX_KEY_FILE_BYTES

PASS = b"correct horse battery staple"


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_round_trip(tmp_path: Path, algorithm: str) -> None:
    path = tmp_path / "ca.pem"
    signer = generate_file_signer(path, passphrase=PASS, algorithm=algorithm)
    assert signer.uri == f"file:{path}"
    assert signer.algorithm.name == algorithm
    assert signer.builder_key() is not None

    reopened = open_signer(signer.uri, passphrase=PASS)
    assert reopened.public_key() == signer.public_key()
    message = b"checkpoint 42"
    verify_signature(signer.public_key(), signature=reopened.sign(message), data=message)
    with pytest.raises(SignatureError):
        verify_signature(signer.public_key(), signature=reopened.sign(message), data=b"other")


def test_file_is_encrypted_pkcs8_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    old_umask = os.umask(0)  # the mode must not depend on a permissive umask
    try:
        generate_file_signer(path, passphrase=PASS)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pem = path.read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(pem, password=None)


def test_p384_signs_with_sha384(tmp_path: Path) -> None:
    signer = generate_file_signer(tmp_path / "k.pem", passphrase=PASS, algorithm="ec-p384")
    public = signer.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    signature = signer.sign(b"data")
    public.verify(signature, b"data", ec.ECDSA(hashes.SHA384()))
    with pytest.raises(InvalidSignature):
        public.verify(signature, b"data", ec.ECDSA(hashes.SHA256()))


def test_ed25519_signature_is_plain(tmp_path: Path) -> None:
    signer = generate_file_signer(tmp_path / "k.pem", passphrase=PASS, algorithm="ed25519")
    public = signer.public_key()
    assert isinstance(public, ed25519.Ed25519PublicKey)
    signature = signer.sign(b"data")
    assert len(signature) == 64
    public.verify(signature, b"data")


def test_wrong_passphrase_is_refused_clearly(tmp_path: Path) -> None:
    signer = generate_file_signer(tmp_path / "ca.pem", passphrase=PASS)
    with pytest.raises(InvalidInputError, match="wrong passphrase"):
        open_signer(signer.uri, passphrase=b"not it")


def test_missing_passphrase_is_refused(tmp_path: Path) -> None:
    signer = generate_file_signer(tmp_path / "ca.pem", passphrase=PASS)
    with pytest.raises(InvalidInputError, match="passphrase is required"):
        open_signer(signer.uri)


def test_empty_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        generate_file_signer(tmp_path / "ca.pem", passphrase=b"")
    assert not (tmp_path / "ca.pem").exists()


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    generate_file_signer(path, passphrase=PASS)
    before = path.read_bytes()
    with pytest.raises(ConflictError, match="overwrite"):
        generate_file_signer(path, passphrase=PASS)
    assert path.read_bytes() == before


def test_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    link = tmp_path / "ca.pem"
    link.symlink_to(victim)
    with pytest.raises(ConflictError):
        generate_file_signer(link, passphrase=PASS)
    assert not victim.exists()


def test_missing_directory_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="cannot create"):
        generate_file_signer(tmp_path / "nope" / "ca.pem", passphrase=PASS)


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        open_signer(f"file:{tmp_path / 'absent.pem'}", passphrase=PASS)


def test_plaintext_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(InvalidInputError, match="not an encrypted"):
        open_signer(f"file:{path}", passphrase=PASS)


def test_unsupported_curve_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k1.pem"
    key = ec.generate_private_key(ec.SECP256K1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASS),
        )
    )
    with pytest.raises(InvalidInputError, match="curve"):
        open_signer(f"file:{path}", passphrase=PASS)


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.pem"
    path.write_bytes(b"A" * (MAX_KEY_FILE_BYTES + 1))
    with pytest.raises(PayloadTooLargeError):
        open_signer(f"file:{path}", passphrase=PASS)


def test_unknown_algorithm_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="unknown key algorithm"):
        generate_file_signer(tmp_path / "k.pem", passphrase=PASS, algorithm="rsa-1024")


def test_file_uri_forms(tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    signer = generate_file_signer(path, passphrase=PASS)
    for uri in (f"file://{path}", f"file://localhost{path}"):
        assert open_signer(uri, passphrase=PASS).public_key() == signer.public_key()
    for bad in ("file:ca.pem", "file:", f"file://elsewhere{path}"):
        with pytest.raises(InvalidInputError):
            open_signer(bad, passphrase=PASS)


@pytest.mark.parametrize("uri", ["s3://bucket/key", "memory:abc", "no-scheme", "x" * 5000])
def test_unknown_schemes_are_refused(uri: str) -> None:
    with pytest.raises(InvalidInputError):
        open_signer(uri)


def test_ephemeral_signer_cannot_be_reopened() -> None:
    signer = generate_ephemeral_signer("ec-p384")
    assert signer.uri.startswith("memory:")
    verify_signature(signer.public_key(), signature=signer.sign(b"m"), data=b"m")
    with pytest.raises(InvalidInputError):
        open_signer(signer.uri)
