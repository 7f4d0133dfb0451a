"""The agent's TLS client context: device certificate plus its keystore key.

A software key is an encrypted PKCS#8 file that Python's ``ssl`` loads with
its passphrase. A PKCS#11 key never leaves the token, and ``ssl`` only loads
keys from files, so for those the context's ``SSL_CTX`` gets an ``EVP_PKEY``
from OpenSSL's pkcs11 engine (libp11, Debian ``libengine-pkcs11-openssl``):
the handshake's signature is made on the token. See :mod:`._p11tls`.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from fleetward.agent.client import load_identity

if TYPE_CHECKING:
    from pathlib import Path

    from fleetward.agent.keystore import Keystore
    from fleetward.agent.mqtt import AgentConfig

__all__ = ["client_context", "tls_context"]


def tls_context(config: AgentConfig) -> ssl.SSLContext:
    """A client context that trusts the broker CA and presents this device.

    Raises:
        InvalidInputError: the identity or key cannot be loaded.
    """
    return client_context(config.directory, config.keystore, cafile=config.broker_ca)


def client_context(directory: Path, keystore: Keystore, *, cafile: Path) -> ssl.SSLContext:
    """A client context that trusts ``cafile`` and presents the device
    enrolled in ``directory`` (the broker, and the device plane over HTTPS).

    Raises:
        InvalidInputError: the identity or key cannot be loaded.
    """
    identity = load_identity(directory)
    context = ssl.create_default_context(cafile=str(cafile))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    cert = directory / "cert.pem"
    if keystore.kind == "software":
        key, passphrase = keystore.key_file(identity["key_uri"])
        context.load_cert_chain(str(cert), str(key), password=passphrase)
    else:
        from fleetward.agent._p11tls import use_token_key

        use_token_key(
            context,
            certificate=cert,
            key_uri=identity["key_uri"],
            pin=keystore.pin or "",
            module=keystore.module,
        )
    return context
