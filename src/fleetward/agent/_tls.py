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
    from fleetward.agent.mqtt import AgentConfig

__all__ = ["tls_context"]


def tls_context(config: AgentConfig) -> ssl.SSLContext:
    """A client context that trusts the broker CA and presents this device.

    Raises:
        InvalidInputError: the identity or key cannot be loaded.
    """
    identity = load_identity(config.directory)
    context = ssl.create_default_context(cafile=str(config.broker_ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    cert = config.directory / "cert.pem"
    if config.keystore.kind == "software":
        key, passphrase = config.keystore.key_file(identity["key_uri"])
        context.load_cert_chain(str(cert), str(key), password=passphrase)
    else:
        from fleetward.agent._p11tls import use_token_key

        use_token_key(
            context,
            certificate=cert,
            key_uri=identity["key_uri"],
            pin=config.keystore.pin or "",
            module=config.keystore.module,
        )
    return context
