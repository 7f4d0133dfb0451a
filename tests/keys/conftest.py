"""Fixtures for the keys tests: a private SoftHSM2 token and fresh key labels.

A PKCS#11 module reads its configuration once, when it is first initialised
in the process, and tokens created by ``softhsm2-util`` afterwards stay
invisible to it. So one session-scoped fixture writes a ``softhsm2.conf``
pointing at a temporary token directory, sets ``SOFTHSM2_CONF`` before the
library is loaded, and initialises one token; every test then generates its
keys under a label of its own, which isolates tests just as well.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes

from fleetward.keys import (
    Signer,
    generate_ephemeral_signer,
    generate_file_signer,
    generate_pkcs11_signer,
)
from tests.hsm import SoftHsm


@pytest.fixture
def key_label() -> str:
    """A key label no other test uses."""
    return f"key-{uuid.uuid4().hex}"


class ExternalSigner(Signer):
    """An in-memory key that hides from pyca builders, as a token key does.

    It forces the X.509 helpers onto their reassembly path without an HSM.
    With ``sign_with`` it lies: it claims ``inner``'s public key but signs
    with another key, which the helpers must catch.
    """

    def __init__(self, inner: Signer, *, sign_with: Signer | None = None) -> None:
        self.uri = f"external:{inner.uri}"
        self._inner = inner
        self._sign_with = sign_with or inner

    def public_key(self) -> CertificateIssuerPublicKeyTypes:
        return self._inner.public_key()

    def sign(self, data: bytes) -> bytes:
        return self._sign_with.sign(data)

    def builder_key(self) -> None:
        return None


SIGNER_KINDS = [
    pytest.param(("file", "ec-p256"), id="file-p256"),
    pytest.param(("file", "ec-p384"), id="file-p384"),
    pytest.param(("file", "ed25519"), id="file-ed25519"),
    pytest.param(("external", "ec-p256"), id="external-p256"),
    pytest.param(("external", "ed25519"), id="external-ed25519"),
    pytest.param(("hsm", "ec-p256"), id="hsm-p256", marks=pytest.mark.hsm),
    pytest.param(("hsm", "ec-p384"), id="hsm-p384", marks=pytest.mark.hsm),
]


@pytest.fixture(params=SIGNER_KINDS)
def any_signer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Signer]:
    """Each kind of signer the X.509 helpers must handle, file and token alike."""
    kind, algorithm = request.param
    if kind == "file":
        yield generate_file_signer(tmp_path / "key.pem", passphrase=b"pw", algorithm=algorithm)
    elif kind == "external":
        yield ExternalSigner(generate_ephemeral_signer(algorithm))
    else:
        hsm: SoftHsm = request.getfixturevalue("softhsm")
        with generate_pkcs11_signer(
            token_label=hsm.token_label,
            key_label=f"key-{uuid.uuid4().hex}",
            pin=hsm.pin,
            algorithm=algorithm,
        ) as signer:
            yield signer


@pytest.fixture
def hsm_signer(softhsm: SoftHsm, key_label: str) -> Iterator[Signer]:
    """A P-256 signer on the session token."""
    with generate_pkcs11_signer(
        token_label=softhsm.token_label, key_label=key_label, pin=softhsm.pin
    ) as signer:
        yield signer
