"""Who a device-plane caller is: the device of its TLS client certificate.

Rules, in order (the first that applies decides):

1. A client certificate from the TLS handshake (the ASGI TLS extension,
   see :mod:`fleetward.api.tls`) is the caller's. The handshake already
   checked that one of fleetward's issuing CAs signed it.
2. Otherwise a certificate in :data:`CLIENT_CERT_HEADER` (base64 DER) is
   believed only when the raw TCP peer is one of ``FLEETWARD_TRUSTED_PROXIES``
   (a reverse proxy that terminated TLS and verified the client); from any
   other address it is refused (:class:`UntrustedCertificateHeaderError`),
   whatever it holds.
3. Otherwise the request has no device credential
   (:class:`ClientCertificateRequiredError`); an operator token does not
   stand in for one.

The certificate must then be one fleetward issued, good, unexpired, and
its device one that may act (:func:`fleetward.identity.certificate_holder`,
re-exported here as :func:`authenticate_certificate`).
Refusals raise; the API's problem handler answers 401 and counts them by
code. None is written to the audit log: a flood of bad requests would
otherwise become a flood of audit entries. Failures count against the source
address and the certificate's serial (429 past the limit, before any
database work: :func:`fleetward.api.deps.authenticate_device`), and the
check runs before the body is read (:mod:`fleetward.api.gate`).
"""

from __future__ import annotations

import base64
import ipaddress
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

from fleetward.api.tls import PEER_EXTENSION
from fleetward.errors import (
    AuthenticationError,
    ClientCertificateRequiredError,
    UntrustedCertificateHeaderError,
)
from fleetward.identity import DeviceIdentity
from fleetward.identity import certificate_holder as authenticate_certificate

__all__ = [
    "CLIENT_CERT_HEADER",
    "DeviceIdentity",
    "authenticate_certificate",
    "presented_certificate",
]

CLIENT_CERT_HEADER = "X-Fleetward-Client-Cert"
MAX_CERT_BYTES = 16384  # DER of a device certificate, with room to spare
MAX_CERT_HEADER = (MAX_CERT_BYTES + 2) // 3 * 4  # its base64


def _trusted(peer: str, proxies: Sequence[str]) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(p, strict=False) for p in proxies)


def presented_certificate(
    scope: Mapping[str, Any], headers: Mapping[str, str], *, trusted_proxies: Sequence[str]
) -> bytes:
    """The DER certificate a request presents (rules 1-3 of the module docstring).

    Raises:
        ClientCertificateRequiredError: no certificate.
        UntrustedCertificateHeaderError: a header from an untrusted address.
        AuthenticationError: a header that is not base64 DER within the limit.
    """
    extensions = scope.get("extensions") or {}
    chain = (extensions.get("tls") or {}).get("client_cert_chain") or []
    if chain:
        try:
            return ssl.PEM_cert_to_DER_cert(str(chain[0]))
        except ValueError as exc:  # the server's own protocol writes it; a shim may not
            raise AuthenticationError("the client certificate is malformed") from exc
    header = headers.get(CLIENT_CERT_HEADER.lower())
    if header is not None:
        peer = (extensions.get(PEER_EXTENSION) or {}).get("peer")
        if not peer or not _trusted(str(peer[0]), trusted_proxies):
            raise UntrustedCertificateHeaderError(
                f"{CLIENT_CERT_HEADER} is believed only from a trusted proxy; "
                "present the certificate in the TLS handshake"
            )
        if len(header) > MAX_CERT_HEADER:
            raise AuthenticationError(f"{CLIENT_CERT_HEADER} over {MAX_CERT_HEADER} characters")
        try:
            return base64.b64decode(header, validate=True)
        except ValueError as exc:  # binascii.Error, or non-ASCII text
            raise AuthenticationError(f"{CLIENT_CERT_HEADER} must be base64 DER") from exc
    hint = " (an API token is not a device credential)" if "authorization" in headers else ""
    raise ClientCertificateRequiredError(
        f"this route needs the device's TLS client certificate{hint}"
    )
