"""Keeping the broker in step with the database: one sync round.

:class:`BrokerSync` keeps ``acl.table``, ``devices-ca.pem`` and ``crl.pem``
in step with the database and moves the plugin's authorization events (and
the refused TLS handshakes Mosquitto logs) into it:

1. A trust change is one audit entry, so :meth:`BrokerSync.refresh` polls the
   audit head and rebuilds the table when it moved: the plugin cuts a
   revoked or quarantined device off within one plugin stat period.
2. When the published CRLs change (their count and numbers), it rewrites
   the CA and CRL bundles and asks Mosquitto to re-read them (SIGHUP), so a
   revoked certificate also fails at the TLS handshake. It does not build
   CRLs: the one CRL publisher is the runtime's (``fleetward.runtime``),
   under a lease; ``on_change`` tells it at once that the head moved, so a
   revocation reaches the TLS layer in about one sync interval.
3. :meth:`BrokerSync.ingest_events` stores the plugin's events.

The runtime calls these on its schedule (``fleetward up``), as does
``fleetward broker sync`` for an operator-run Mosquitto.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from fleetward import audit, identity
from fleetward.comms import service
from fleetward.comms.compile import compile_table
from fleetward.comms.mosquitto_conf import (
    DEFAULT_MQTT_PORT,
    DEFAULT_SERVICE_PORT,
    MAX_PAYLOAD,
    SERVICE_USERNAME,
    BrokerFiles,
    write_config,
    write_file,
)
from fleetward.identity import Pki
from fleetward.store import Database

__all__ = ["MAX_REFUSALS_KEPT", "BrokerSync", "prepare", "trust_bundles"]

log = logging.getLogger("fleetward.broker")

MAX_REFUSALS_KEPT = 10_000  # refused handshakes kept between rounds; more are dropped


def trust_bundles(db: Database, pki: Pki) -> tuple[bytes, bytes]:
    """The device CA bundle and the CRL bundle (PEM) from the database."""
    with db.read() as s:
        return identity.trust_bundles(s, pki)


class BrokerSync:
    """Keeps the broker's table and trust files in step with the database.

    Args:
        db: The database.
        pki: Reads the published CRLs.
        files: The broker's directory.
        reload: Asks Mosquitto to re-read its CA and CRL files.
        max_payload: The largest PUBLISH payload the table allows.
        on_change: Called after the table was rebuilt for a new audit head
            (``fleetward up`` wakes the CRL publisher with it).
    """

    def __init__(
        self,
        db: Database,
        pki: Pki,
        files: BrokerFiles,
        *,
        reload: Callable[[], None] | None = None,
        max_payload: int = MAX_PAYLOAD,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.pki = pki
        self.files = files
        self.reload = reload
        self.max_payload = max_payload
        self.on_change = on_change
        self.generation = 0
        self._head: int | None = None
        self._crl_state: tuple[object, ...] | None = None
        self._pending_events: Path | None = None
        self._refused: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self.last_build_seconds = 0.0

    def note_refused(self, peer: str, reason: str) -> None:
        """Remember a refused TLS handshake (called from the log reader)."""
        with self._lock:
            if len(self._refused) < MAX_REFUSALS_KEPT:  # a flood is counted, not kept
                self._refused.append((peer, reason))

    def _state(self) -> tuple[int, tuple[object, ...]]:
        with self.db.read() as s:
            return audit.head_seq(s), identity.trust_state(s)

    def _service_fingerprint(self) -> str:
        if not self.files.service_cert.exists():
            return ""
        cert = x509.load_pem_x509_certificate(self.files.service_cert.read_bytes())
        return cert.fingerprint(hashes.SHA1()).hex()  # noqa: S303 - see compile.py

    def write_table(self) -> int:
        """Rebuild ``acl.table`` now; returns how many identities it lists."""
        start = time.perf_counter()
        with self.db.read() as s:
            policies, devices = service.broker_snapshot(s)
        self.generation += 1
        text = compile_table(
            policies=policies,
            devices=devices,
            generation=self.generation,
            max_payload=self.max_payload,
            service_username=SERVICE_USERNAME,
            service_certificate=self._service_fingerprint(),
        )
        write_file(self.files.table, text.encode())
        self.last_build_seconds = time.perf_counter() - start
        return len(devices)

    def write_trust(self) -> None:
        """Rewrite ``devices-ca.pem`` and ``crl.pem``."""
        cas, crls = trust_bundles(self.db, self.pki)
        write_file(self.files.devices_ca, cas)
        write_file(self.files.crl, crls)

    def refresh(self) -> bool:
        """Bring every file up to date; returns whether anything changed."""
        with self._refresh_lock:
            return self._refresh()

    def _refresh(self) -> bool:
        head, crl_state = self._state()
        changed = False
        if head != self._head:
            try:
                self.write_table()  # first: the plugin cuts revoked devices off
            except ValueError:
                # A value the table cannot carry: keep enforcing the previous
                # table, keep the CRL fresh below, and say so loudly.
                log.exception("broker table not rebuilt")
            else:
                self._head = head
            changed = True
            if self.on_change is not None:
                self.on_change()  # a revocation also needs a CRL: say so now
        if crl_state != self._crl_state:
            self.write_trust()
            self._crl_state = crl_state
            changed = True
            if self.reload is not None:
                self.reload()  # Mosquitto re-reads CA and CRL files on SIGHUP.
        return changed

    def ingest_events(self) -> int:
        """Move the plugin's events into the database.

        The file is renamed first and read one call later: the plugin opens
        it per flush, so a write that raced the rename has landed by then.
        """
        stored = 0
        with self._lock:
            refused, self._refused = self._refused, []
        if refused:
            with self.db.session() as s:
                stored += service.record_handshake_refusals(s, refused)
        if self._pending_events is not None and self._pending_events.exists():
            lines = self._pending_events.read_text(errors="replace").splitlines()
            with self.db.session() as s:
                stored += service.record_acl_events(s, lines)
            self._pending_events.unlink()
        self._pending_events = None
        if self.files.events.exists():
            pending = self.files.events.with_suffix(".ingest")
            os.replace(self.files.events, pending)
            self._pending_events = pending
        return stored


def prepare(
    db: Database,
    pki: Pki,
    root: Path,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_MQTT_PORT,
    service_port: int = DEFAULT_SERVICE_PORT,
) -> BrokerFiles:
    """Create or refresh everything a broker needs under ``root``: the
    configuration and PKI (:func:`~.mosquitto_conf.write_config`), the trust
    bundles and the table.

    Raises:
        PluginBuildError: the plugin cannot be compiled here.
    """
    files = write_config(root, host=host, port=port, service_port=service_port)
    sync = BrokerSync(db, pki, files)
    sync.write_trust()
    sync.write_table()
    return files
