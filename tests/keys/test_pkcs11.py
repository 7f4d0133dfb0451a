"""PKCS#11 signers on a private SoftHSM2 token: custody attributes and behaviour."""

from __future__ import annotations

import gc
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11

from fleetward.errors import (
    ConflictError,
    FleetwardError,
    InvalidInputError,
    NotFoundError,
    SignatureError,
)
from fleetward.keys import _p11session, generate_pkcs11_signer, open_signer, verify_signature
from fleetward.keys._p11session import load_module
from tests.hsm import SoftHsm

pytestmark = pytest.mark.hsm


@contextmanager
def token_session(hsm: SoftHsm) -> Iterator[Any]:
    """A plain session that rides on the login an open signer holds.

    It does not log in itself: PKCS#11 login is per application, and a
    logged-in session's close would log the signer out too.
    """
    token = load_module(hsm.module).get_token(token_label=hsm.token_label)
    with token.open() as session:
        yield session


@pytest.mark.parametrize(("algorithm", "size"), [("ec-p256", 256), ("ec-p384", 384)])
def test_generate_and_sign(softhsm: SoftHsm, key_label: str, algorithm: str, size: int) -> None:
    with generate_pkcs11_signer(
        token_label=softhsm.token_label, key_label=key_label, pin=softhsm.pin, algorithm=algorithm
    ) as signer:
        assert signer.uri == softhsm.uri(key_label)
        assert signer.builder_key() is None
        public = signer.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert public.curve.key_size == size
        signature = signer.sign(b"checkpoint")
        decode_dss_signature(signature)  # DER, not raw r||s
        verify_signature(public, signature=signature, data=b"checkpoint")
        digest = hashes.SHA256() if size == 256 else hashes.SHA384()
        public.verify(signature, b"checkpoint", ec.ECDSA(digest))
        with pytest.raises(SignatureError):
            verify_signature(public, signature=signature, data=b"checkpoinT")


def test_private_key_stays_on_the_token(softhsm: SoftHsm, key_label: str) -> None:
    with (
        generate_pkcs11_signer(
            token_label=softhsm.token_label, key_label=key_label, pin=softhsm.pin
        ),
        token_session(softhsm) as session,
    ):
        private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=key_label)
        assert private[Attribute.TOKEN] is True
        assert private[Attribute.PRIVATE] is True
        assert private[Attribute.SENSITIVE] is True
        assert private[Attribute.EXTRACTABLE] is False
        assert private[Attribute.ALWAYS_SENSITIVE] is True
        assert private[Attribute.NEVER_EXTRACTABLE] is True
        assert private[Attribute.SIGN] is True
        assert private[Attribute.DERIVE] is False
        with pytest.raises(p11.AttributeSensitive):
            private[Attribute.VALUE]
        public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=key_label)
        assert public[Attribute.ID] == private[Attribute.ID] != b""


def test_key_persists_and_reopens_by_uri(softhsm: SoftHsm, key_label: str) -> None:
    with generate_pkcs11_signer(
        token_label=softhsm.token_label, key_label=key_label, pin=softhsm.pin
    ) as created:
        public = created.public_key()
    with open_signer(softhsm.uri(key_label), pin=softhsm.pin) as reopened:
        assert reopened.public_key() == public
        verify_signature(public, signature=reopened.sign(b"m"), data=b"m")


def test_pin_comes_from_the_caller_not_the_environment(
    softhsm: SoftHsm, key_label: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # keys/ reads no environment: FLEETWARD_PKCS11_PIN reaches it through the
    # installation's settings (tests/test_config.py follows it into KeyRing).
    with generate_pkcs11_signer(
        token_label=softhsm.token_label, key_label=key_label, pin=softhsm.pin
    ):
        pass
    monkeypatch.setenv("FLEETWARD_PKCS11_PIN", softhsm.pin)
    with pytest.raises(InvalidInputError, match="PIN is required"):
        open_signer(softhsm.uri(key_label))
    with open_signer(softhsm.uri(key_label), pin=softhsm.pin, module=softhsm.module) as signer:
        assert signer.sign(b"m")


def test_wrong_pin_is_refused(softhsm: SoftHsm, key_label: str) -> None:
    # While a signer holds the token's login, a wrong PIN must still be refused.
    with (
        generate_pkcs11_signer(
            token_label=softhsm.token_label, key_label=key_label, pin=softhsm.pin
        ),
        pytest.raises(InvalidInputError, match="wrong PIN"),
    ):
        open_signer(softhsm.uri(key_label), pin="000000")
    # With no signer open, the token itself refuses the PIN at C_Login.
    gc.collect()  # runs the finalisers of any signer a test forgot to close
    assert _p11session._logins == {}
    with pytest.raises(InvalidInputError, match="wrong PIN"):
        open_signer(softhsm.uri(key_label), pin="000000")


def test_existing_label_is_a_conflict(softhsm: SoftHsm, key_label: str) -> None:
    with generate_pkcs11_signer(
        token_label=softhsm.token_label, key_label=key_label, pin=softhsm.pin
    ) as first:
        with pytest.raises(ConflictError):
            generate_pkcs11_signer(
                token_label=softhsm.token_label, key_label=key_label, pin=softhsm.pin
            )
        # The refused attempt left the existing key alone.
        with open_signer(first.uri, pin=softhsm.pin) as again:
            assert again.public_key() == first.public_key()


def test_missing_key_and_token_are_not_found(softhsm: SoftHsm, key_label: str) -> None:
    with pytest.raises(NotFoundError, match="key"):
        open_signer(softhsm.uri(key_label), pin=softhsm.pin)
    with pytest.raises(NotFoundError, match="token"):
        open_signer(f"pkcs11:token=absent;object={key_label}", pin=softhsm.pin)


def test_ed25519_is_not_supported(softhsm: SoftHsm, key_label: str) -> None:
    with pytest.raises(InvalidInputError, match="not supported"):
        generate_pkcs11_signer(
            token_label=softhsm.token_label,
            key_label=key_label,
            pin=softhsm.pin,
            algorithm="ed25519",
        )


def test_closed_signer_refuses_to_sign(softhsm: SoftHsm, key_label: str) -> None:
    signer = generate_pkcs11_signer(
        token_label=softhsm.token_label, key_label=key_label, pin=softhsm.pin
    )
    signer.close()
    signer.close()  # idempotent
    with pytest.raises(FleetwardError, match="closed"):
        signer.sign(b"m")


def test_closing_one_signer_keeps_others_logged_in(softhsm: SoftHsm, key_label: str) -> None:
    with generate_pkcs11_signer(
        token_label=softhsm.token_label, key_label=key_label, pin=softhsm.pin
    ) as first:
        second = open_signer(first.uri, pin=softhsm.pin)
        second.close()
        verify_signature(first.public_key(), signature=first.sign(b"m"), data=b"m")


def test_concurrent_signing(softhsm: SoftHsm, key_label: str) -> None:
    with generate_pkcs11_signer(
        token_label=softhsm.token_label, key_label=key_label, pin=softhsm.pin
    ) as signer:
        results: list[tuple[bytes, bytes]] = []
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(10):
                    message = f"{n}-{i}".encode()
                    results.append((message, signer.sign(message)))
            except BaseException as exc:  # collected and re-raised below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(results) == 80
        for message, signature in results:
            verify_signature(signer.public_key(), signature=signature, data=message)


def test_unique_label_generation_skips_searches_and_works(softhsm: SoftHsm) -> None:
    label = f"dev.{uuid.uuid4().hex}"
    with generate_pkcs11_signer(
        token_label=softhsm.token_label, key_label=label, pin=softhsm.pin, unique_label=True
    ) as signer:
        verify_signature(signer.public_key(), signature=signer.sign(b"x"), data=b"x")
        assert signer.uri == softhsm.uri(label)
    with open_signer(softhsm.uri(label), pin=softhsm.pin) as reopened:
        verify_signature(reopened.public_key(), signature=reopened.sign(b"y"), data=b"y")
