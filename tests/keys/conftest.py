"""Fixtures for the keys tests: a private SoftHSM2 token and fresh key labels.

A PKCS#11 module reads its configuration once, when it is first initialised
in the process, and tokens created by ``softhsm2-util`` afterwards stay
invisible to it. So one session-scoped fixture writes a ``softhsm2.conf``
pointing at a temporary token directory, sets ``SOFTHSM2_CONF`` before the
library is loaded, and initialises one token; every test then generates its
keys under a label of its own, which isolates tests just as well.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from pkcs11 import exceptions as p11

from fleetward.keys import (
    Signer,
    generate_ephemeral_signer,
    generate_file_signer,
    generate_pkcs11_signer,
    pkcs11_uri,
)
from fleetward.keys._p11session import DEFAULT_MODULE, load_module

SOFTHSM_MODULE = os.environ.get("FLEETWARD_TEST_PKCS11_MODULE", DEFAULT_MODULE)


@dataclass(frozen=True)
class SoftHsm:
    """A SoftHSM2 token private to this test session."""

    module: str
    token_label: str
    pin: str
    so_pin: str

    def uri(self, key_label: str) -> str:
        """Return the PKCS#11 URI of a key on this token."""
        return pkcs11_uri(token_label=self.token_label, key_label=key_label)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """Initialise a token in a temporary SoftHSM2 token directory."""
    if not Path(SOFTHSM_MODULE).exists() or shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM2 is not installed")
    root = tmp_path_factory.mktemp("softhsm")
    tokens = root / "tokens"
    tokens.mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    hsm = SoftHsm(
        module=SOFTHSM_MODULE,
        token_label=f"fw-test-{secrets.token_hex(4)}",
        pin=secrets.token_hex(8),
        so_pin=secrets.token_hex(8),
    )
    with pytest.MonkeyPatch.context() as mp:
        # Before the module is loaded: SoftHSM2 reads this at C_Initialize.
        mp.setenv("SOFTHSM2_CONF", str(conf))
        mp.setenv("FLEETWARD_PKCS11_MODULE", hsm.module)
        mp.delenv("FLEETWARD_PKCS11_PIN", raising=False)
        subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                hsm.token_label,
                "--pin",
                hsm.pin,
                "--so-pin",
                hsm.so_pin,
            ],
            check=True,
            capture_output=True,
        )
        lib = load_module(hsm.module)
        try:
            lib.get_token(token_label=hsm.token_label)
        except p11.NoSuchToken:
            # Something in this process loaded the module before us, with
            # another configuration; start it over so it reads ours.
            lib.reinitialize()
        yield hsm


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
