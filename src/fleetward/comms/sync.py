"""Keeping the broker in step with the database: one sync round.

:class:`BrokerSync` keeps ``acl.table``, the trust anchors of each
environment's device listener (``devices-ca-<environment>.pem``) and
``crl.pem`` in step with the database and moves the plugin's authorization
events (and the refused TLS handshakes Mosquitto logs) into it:

1. :meth:`BrokerSync.refresh` rebuilds the table when one of its inputs
   changed, and only then. The signal is ``broker_generation``: database
   triggers (migration 0010) bump it in the same transaction as every write
   to what :func:`~.service.broker_snapshot` reads (tenants, policies,
   devices, certificates), so no write path can miss it and nothing else
   moves it: audit appends (a refused request, a token created) never
   rebuild the table. It is also rebuilt when the trust state changes, when
   a service identity's certificate file changes, and when the first listed
   certificate expires (expiry is no write). The plugin cuts a revoked or
   quarantined device off within one plugin stat period.
   The table also lists fleetward's own identities with the fingerprints of
   their certificates (rebuilt when one of those is reissued).
2. When the trust state changes (:func:`fleetward.identity.trust_state`:
   the published CRLs, the CAs), it rewrites every environment's anchors and
   the CRL bundle and asks Mosquitto to re-read them (SIGHUP: Mosquitto
   2.0.11 builds a fresh TLS context, cafile and CRL included, for every
   listener with a ``crlfile``), so a revoked certificate also fails at the
   TLS handshake. It does not build
   CRLs: the one CRL publisher is the runtime's (``fleetward.runtime``),
   under a lease; ``on_change`` tells it at once that the table's inputs
   moved, so a
   revocation reaches the TLS layer in about one sync interval.
3. :meth:`BrokerSync.ingest_events` stores the plugin's events.

The runtime calls these on its schedule (``fleetward up``), as does
``fleetward broker sync`` for an operator-run Mosquitto.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from fleetward import identity
from fleetward.comms import service
from fleetward.comms.compile import BrokerService, compile_table
from fleetward.comms.identities import SERVICE_IDENTITIES, ServiceIdentity
from fleetward.comms.models import BrokerGeneration
from fleetward.comms.mosquitto_conf import (
    ENVIRONMENTS,
    MAX_PAYLOAD,
    BrokerFiles,
    Listeners,
    write_config,
    write_file,
)
from fleetward.identity import Pki, ServicePki, TlsPair
from fleetward.store import Database

__all__ = ["MAX_REFUSALS_KEPT", "BrokerSync", "prepare", "unusable_anchor"]

log = logging.getLogger("fleetward.broker")

MAX_REFUSALS_KEPT = 10_000  # refused handshakes kept between rounds; more are dropped


def unusable_anchor() -> bytes:
    """A CA certificate nothing chains to: its key is dropped at once.

    Mosquitto refuses to start on an empty ``cafile``; an environment
    without an issuing CA (yet) gets this instead, so its listener runs and
    refuses every certificate.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetward: no issuing CA yet")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


class BrokerSync:
    """Keeps the broker's table and trust files in step with the database.

    Args:
        db: The database.
        pki: Reads the published CRLs.
        files: The broker's directory.
        service_pki: fleetward's service CA (the certificates of its identities).
        reload: Asks Mosquitto to re-read its CA and CRL files.
        max_payload: The largest PUBLISH payload the table allows.
        on_change: Called after the table was rebuilt because its inputs
            changed (``fleetward up`` wakes the CRL publisher with it).
        identities: fleetward's own identities (default: its three jobs).
    """

    def __init__(
        self,
        db: Database,
        pki: Pki,
        files: BrokerFiles,
        *,
        service_pki: ServicePki,
        reload: Callable[[], None] | None = None,
        max_payload: int = MAX_PAYLOAD,
        on_change: Callable[[], None] | None = None,
        identities: Mapping[str, ServiceIdentity] = SERVICE_IDENTITIES,
    ) -> None:
        self.db = db
        self.pki = pki
        self.files = files
        self.service_pki = service_pki
        self.identities = dict(identities)
        self._service_state: tuple[object, ...] | None = None
        self._pairs: dict[str, TlsPair] = {}
        self.reload = reload
        self.max_payload = max_payload
        self.on_change = on_change
        self.generation = 0  # table rewrites by this process (the table carries it)
        self._inputs: tuple[object, ...] | None = None
        self._next_expiry: dt.datetime | None = None
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

    def _state(self) -> tuple[tuple[object, ...], tuple[object, ...]]:
        """The table's input generation (with the trust state, which also
        feeds it) and the trust state alone, in one read."""
        with self.db.read() as s:
            generation = s.execute(
                select(BrokerGeneration.value).where(BrokerGeneration.id == 1)
            ).scalar_one_or_none()
            trust = identity.trust_state(s)
        return (generation, trust), trust

    def _services(self) -> list[BrokerService]:
        """Each identity with the fingerprint of its certificate (reissued
        here when it is due, so the table and the file never disagree)."""
        out = []
        self._pairs = {job: self.service_pki.client(job) for job in self.identities}
        for job, ident in self.identities.items():
            pair = self._pairs[job]
            cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
            digest = cert.fingerprint(hashes.SHA1()).hex()  # noqa: S303 - see compile.py
            out.append(BrokerService(identity=ident, certificates=(digest,)))
        self._service_state = self._certificates_state()
        return out

    def _certificates_state(self) -> tuple[object, ...]:
        """A cheap fingerprint of the identities' certificate files."""
        state: list[object] = []
        for pair in self._pairs.values():
            try:
                st = pair.cert.stat()
            except FileNotFoundError:
                state.append(None)
            else:
                state.append((st.st_ino, st.st_mtime_ns))
        return tuple(state)

    def write_table(self) -> int:
        """Rebuild ``acl.table`` now; returns how many identities it lists."""
        start = time.perf_counter()
        now = dt.datetime.now(dt.UTC)
        with self.db.read() as s:
            policies, devices = service.broker_snapshot(s, now=now)
            # Expiry changes the table without a write: rebuild when the
            # first certificate it could list expires.
            self._next_expiry = identity.next_certificate_expiry(s, now=now)
        services = self._services()
        self.generation += 1
        text = compile_table(
            policies=policies,
            devices=devices,
            services=services,
            generation=self.generation,
            max_payload=self.max_payload,
        )
        write_file(self.files.table, text.encode())
        self.last_build_seconds = time.perf_counter() - start
        return len(devices)

    def write_trust(self) -> None:
        """Rewrite every environment's anchors and ``crl.pem``."""
        with self.db.read() as s:
            anchors = {env: identity.trust_anchors(s, environment=env) for env in ENVIRONMENTS}
            crls = identity.crl_bundle(s, self.pki)
        for env, pem in anchors.items():
            write_file(self.files.devices_ca(env), pem or unusable_anchor())
        write_file(self.files.crl, crls)

    def refresh(self) -> bool:
        """Bring every file up to date; returns whether anything changed."""
        with self._refresh_lock:
            return self._refresh()

    def _refresh(self) -> bool:
        inputs, crl_state = self._state()
        changed = False
        if self._certificates_state() != self._service_state:
            self._inputs = None  # a service certificate changed: rebuild the table
        expiry = self._next_expiry
        if expiry is not None and dt.datetime.now(dt.UTC) >= expiry:
            self._inputs = None  # a listed certificate expired: rebuild the table
        if inputs != self._inputs:
            try:
                self.write_table()  # first: the plugin cuts revoked devices off
            except ValueError:
                # A value the table cannot carry: keep enforcing the previous
                # table, keep the CRL fresh below, and say so loudly.
                log.exception("broker table not rebuilt")
            else:
                self._inputs = inputs
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
    service_pki: ServicePki,
    listeners: Listeners,
) -> BrokerFiles:
    """Create or refresh everything a broker needs under ``root``: the
    configuration (:func:`~.mosquitto_conf.write_config`), the trust
    bundles and the table.

    Raises:
        PluginBuildError: the plugin cannot be compiled here.
    """
    files = write_config(root, service_pki=service_pki, listeners=listeners)
    sync = BrokerSync(db, pki, files, service_pki=service_pki)
    sync.write_trust()
    sync.write_table()
    return files
