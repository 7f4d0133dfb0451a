"""The device plane's TLS: fleetward's server certificate, device client
certificates, and trust that follows the database without a restart.

**Server side.** The device plane presents ``ctx.service_pki.server()``
(fleetward's own service CA, the names of ``FLEETWARD_SERVICE_NAMES``).

**Client certificates** are optional at the TLS layer (``CERT_OPTIONAL``):
EST ``simpleenroll``, OCSP, CRLs, CA certificates, the TUF repository and
broker discovery take none, so one listener serves devices that have a
certificate and devices that are still to get one. A certificate a client
does present must chain to one of :func:`fleetward.identity.trust_anchors`
(every environment's issuing CAs, as explicitly trusted anchors, no roots),
or the handshake fails. Whether it is still good (not revoked, not expired,
a device that may act) is decided per request against the database by
:func:`fleetward.api.device_auth.authenticate_certificate`: the TLS layer
only says who signed it.

**Trust that follows the database.** uvicorn takes one ``SSLContext`` at
start. :class:`DeviceTls` hands it a *base* context whose ``sni_callback``
(which OpenSSL calls on every ClientHello, with or without a server name)
swaps in the *current* context, and :meth:`DeviceTls.refresh` builds a new
current context when the trust anchors change (a tenant created, a CA
rotated or retired). OpenSSL verifies the client's chain with the store of
the context the connection ends up with, so a new CA is trusted from the
next handshake on. :meth:`DeviceTls.start` runs the refresh every
:data:`REFRESH_SECONDS` in a thread.

**The certificate reaches the app** through :class:`TlsHttpProtocol`,
the listeners' HTTP protocol
(:class:`~fleetward.api.protocol.GuardedHttpProtocol`: uvicorn's, with a
header-read timeout and a connection cap) with the ASGI TLS extension added
to each request's scope (``scope["extensions"]["tls"]["client_cert_chain"]``, PEM), and the
raw TCP peer in ``scope["extensions"]["fleetward.peer"]`` (uvicorn's
proxy-header middleware rewrites ``scope["client"]``; whether a client
certificate *header* may be believed depends on the real peer).
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetward import identity
from fleetward._files import private_dir
from fleetward.api.protocol import GuardedHttpProtocol
from fleetward.runtime.context import AppContext

__all__ = [
    "PEER_EXTENSION",
    "REFRESH_SECONDS",
    "DeviceTls",
    "TlsHttpProtocol",
    "server_context",
]

PEER_EXTENSION = "fleetward.peer"
REFRESH_SECONDS = 1.0  # a new CA is trusted at the device plane within this
FULL_CHECK_EVERY = 30  # refreshes between full comparisons of the anchors
_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}

log = logging.getLogger(__name__)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context presenting ``cert`` (HTTP/1.1 only)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    context.set_alpn_protocols(["http/1.1"])
    return context


class DeviceTls:
    """The device plane's TLS contexts (one per API process).

    Args:
        ctx: The installation (its service PKI and database).
        interval: Seconds between checks of the trust anchors.
    """

    def __init__(self, ctx: AppContext, *, interval: float = REFRESH_SECONDS) -> None:
        self._ctx = ctx
        self._pair = ctx.service_pki.server()
        self._dir = private_dir(ctx.settings.home / "device-plane")
        self.interval = interval
        self._state: tuple[int, int, int] | None = None
        self._anchors: bytes | None = None
        self._checks = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.generation = 0
        self.base = self._context(None)
        self.base.sni_callback = self._select
        self.current = self.base
        self.refresh()

    def _context(self, anchors: bytes | None) -> ssl.SSLContext:
        context = server_context(self._pair.cert, self._pair.key)
        # Optional: EST enrollment, OCSP, CRLs and TUF serve devices without
        # a certificate; a certificate that is presented must verify.
        context.verify_mode = ssl.CERT_OPTIONAL
        if anchors:
            # The TRUSTED CERTIFICATE form is read from a file only (cadata
            # parses plain certificates); one file per build, then removed.
            fd, name = tempfile.mkstemp(dir=self._dir, prefix="anchors-", suffix=".pem")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(anchors)
                context.load_verify_locations(cafile=name)
            finally:
                os.unlink(name)
        return context

    def _select(self, sslobj: Any, _name: str | None, _base: ssl.SSLContext) -> None:
        current = self.current
        if current is not self.base:
            sslobj.context = current

    def refresh(self) -> bool:
        """Rebuild the current context if the trust anchors changed; whether it did."""
        with self._lock:
            self._checks += 1
            with self._ctx.db.read() as s:
                state = identity.trust_state(s)
                if state == self._state and self._checks % FULL_CHECK_EVERY:
                    return False
                anchors = identity.trust_anchors(s)
            self._state = state
            if anchors == self._anchors:
                return False
            context = self._context(anchors)
            context.sni_callback = None
            self._anchors = anchors
            self.current = context
            self.generation += 1
            return True

    def factory(self) -> Callable[[Any, Any], ssl.SSLContext]:
        """uvicorn's ``ssl_context_factory``: the base context."""
        return lambda _config, _default: self.base

    def start(self) -> None:
        """Refresh every :attr:`interval` seconds in a daemon thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="device-tls", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the refresh thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except Exception:  # a database hiccup must not end the refresh
                log.exception("device plane trust refresh failed")


class TlsHttpProtocol(GuardedHttpProtocol):
    """The listeners' HTTP protocol (:mod:`fleetward.api.protocol`: header
    timeout, connection cap), with the peer's TLS certificate and the raw
    TCP peer in each request's scope (see the module docstring)."""

    _tls: dict[str, Any] | None = None
    _raw_peer: tuple[str, int] | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if self._refused:
            return
        self._raw_peer = self.client
        self._tls = None
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            der = ssl_object.getpeercert(binary_form=True)
            self._tls = {
                "server_cert": None,
                "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
                "client_cert_name": None,
                "client_cert_error": None,
                "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
                "cipher_suite": None,
            }

    def on_message_begin(self) -> None:
        super().on_message_begin()
        extensions: dict[str, Any] = {PEER_EXTENSION: {"peer": self._raw_peer}}
        if self._tls is not None:
            extensions["tls"] = self._tls
        self.scope["extensions"] = extensions
