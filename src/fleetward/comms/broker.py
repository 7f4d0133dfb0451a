"""The broker adapter: configure Mosquitto, keep its trust files fresh, run it.

Mosquitto is told (see :func:`render_config`):

- a device listener on TLS that requires a certificate from a
  **device-issuing** CA (``devices-ca.pem``: each tenant's root and issuing
  CAs, nothing else), checks ``crl.pem``, and takes the certificate subject
  as the MQTT identity (``use_subject_as_username``) and that identity as
  the client id (``use_username_as_clientid``), so no client can take over
  another's session and equal device ids of two tenants never collide;
- a service listener for fleetward itself, trusting only the local broker
  CA that issued fleetward's service certificate;
- the fleetward plugin for every authorization decision.

:class:`BrokerSync` is the loop that keeps ``acl.table``, ``devices-ca.pem``
and ``crl.pem`` in step with the database (a trust change is one audit
entry, so it polls the audit head) and ingests the plugin's events.
:class:`MosquittoProcess` runs the broker as a child (``fleetward up``);
an operator-run Mosquitto gets the same files from ``fleetward broker
render`` and ``fleetward broker sync``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import func, select

from fleetward._files import private_dir, write_private
from fleetward.api.context import AppContext
from fleetward.audit.models import AuditHead
from fleetward.comms import service
from fleetward.comms.compile import compile_table
from fleetward.comms.plugin import build_plugin
from fleetward.errors import FleetwardError
from fleetward.identity import publication
from fleetward.identity.models import CertificateAuthority, PublishedCrl
from fleetward.store.db import utcnow

__all__ = [
    "DEFAULT_MQTT_PORT",
    "MAX_PAYLOAD",
    "SERVICE_USERNAME",
    "BrokerFiles",
    "BrokerRuntime",
    "BrokerSync",
    "MosquittoProcess",
    "prepare",
]

log = logging.getLogger("fleetward.broker")
SUPERVISE_EVERY_S = 0.5  # how soon an exited Mosquitto is restarted

DEFAULT_MQTT_PORT = 8883
DEFAULT_SERVICE_PORT = 8884
# The largest PUBLISH payload a device may send (the plugin denies and counts
# larger ones). Telemetry and boot evidence are small; firmware travels over
# HTTP(S), not MQTT.
MAX_PAYLOAD = 64 * 1024
# Mosquitto's own hard limit on any packet: past it the client is dropped.
MAX_PACKET = 256 * 1024
SERVICE_CN = "fleetward-broker-service"
CRL_CHECK_SECONDS = 30.0
# use_subject_as_username renders the subject per RFC 2253.
SERVICE_USERNAME = f"CN={SERVICE_CN}"
# Only a refused peer certificate counts: a device that vanishes without a
# TLS close also logs an OpenSSL error ("unexpected eof"), and is not refused.
_REFUSED = (
    r"(?:certificate verify failed|certificate revoked|peer did not return a certificate|"
    r"no certificate|unsupported certificate|certificate expired|bad certificate)"
)
# Mosquitto reports a refused handshake in one of two shapes, depending on
# whether it failed while accepting or after the connection was registered.
_HANDSHAKE = re.compile(rf"OpenSSL Error\[\d+\]: (?P<reason>.*{_REFUSED}.*)$")
_ACCEPT_FAILED = re.compile(
    rf"Client connection from (?P<peer>\S+) failed: (?P<reason>.*{_REFUSED}.*?)\.?$"
)
_NEW_CONN = re.compile(r"New connection from (?P<peer>\S+) on port (?P<port>\d+)")


class BrokerError(FleetwardError):
    """Mosquitto could not be configured, started or reached."""


@dataclass(frozen=True)
class BrokerFiles:
    """Everything the broker reads, under one directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "mosquitto.conf"

    @property
    def table(self) -> Path:
        return self.root / "acl.table"

    @property
    def events(self) -> Path:
        return self.root / "events.log"

    @property
    def devices_ca(self) -> Path:
        return self.root / "devices-ca.pem"

    @property
    def crl(self) -> Path:
        return self.root / "crl.pem"

    @property
    def broker_ca(self) -> Path:
        return self.root / "broker-ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def service_cert(self) -> Path:
        return self.root / "service.pem"

    @property
    def service_key(self) -> Path:
        return self.root / "service.key"

    @property
    def info(self) -> Path:
        return self.root / "broker.json"


def _write(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically (readers see the old or the new file), mode
    0600: Mosquitto runs as the user who runs fleetward (see render_config),
    so no file here needs to be wider."""
    write_private(path, data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),  # Mosquitto reads its keys unattended.
    )


def _local_pki(files: BrokerFiles, now: dt.datetime) -> None:
    """Create the broker CA, the server certificate and the service identity once."""
    if files.broker_ca.exists() and files.service_key.exists():
        return
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetward broker CA")])
    validity = dt.timedelta(days=3650)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, eku: x509.ObjectIdentifier, san: bool) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        )
        if san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    private_dir(files.root)
    server_pem, server_key = leaf("localhost", ExtendedKeyUsageOID.SERVER_AUTH, True)
    service_pem, service_key = leaf(SERVICE_CN, ExtendedKeyUsageOID.CLIENT_AUTH, False)
    _write(files.server_key, server_key)
    _write(files.server_cert, server_pem)
    _write(files.service_key, service_key)
    _write(files.service_cert, service_pem)
    _write(files.broker_ca, ca.public_bytes(serialization.Encoding.PEM))


def render_config(
    files: BrokerFiles, *, plugin: Path, host: str, port: int, service_port: int
) -> str:
    """The mosquitto.conf fleetward runs (and hands to operators)."""
    # Started as root, Mosquitto would switch to user "mosquitto", who cannot
    # read fleetward's 0600 keys; it runs as whoever runs fleetward instead.
    user = pwd.getpwuid(os.geteuid()).pw_name
    return f"""# Written by fleetward; edits are overwritten. See docs/comms.md.
user {user}
per_listener_settings false
allow_anonymous false
persistence false
max_packet_size {MAX_PACKET}
max_queued_messages 1000
# Retained messages would let one device fill the broker's memory with
# distinct topics; nothing in fleetward needs them.
retain_available false
log_dest stdout
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
log_timestamp true
plugin {plugin}
plugin_opt_table {files.table}
plugin_opt_events {files.events}

# Devices: a certificate from a device-issuing CA, checked against the CRL;
# the subject is the identity and the client id (no takeover).
listener {port} {host}
certfile {files.server_cert}
keyfile {files.server_key}
cafile {files.devices_ca}
crlfile {files.crl}
require_certificate true
use_subject_as_username true
use_username_as_clientid true
tls_version tlsv1.2

# fleetward itself (commands out, reports in): only the local broker CA. Its
# several connections (API workers, campaign driver) share one identity, so
# they keep their own client ids here.
listener {service_port} {host}
certfile {files.server_cert}
keyfile {files.server_key}
cafile {files.broker_ca}
require_certificate true
use_subject_as_username true
tls_version tlsv1.2
"""


def _trust_files(ctx: AppContext) -> tuple[bytes, bytes]:
    """The device CA bundle and the CRL bundle (PEM) from the database."""
    cas: list[bytes] = []
    crls: list[bytes] = []
    with ctx.db.read() as s:
        rows = s.execute(
            select(CertificateAuthority)
            .where(CertificateAuthority.certificate_pem.is_not(None))
            .order_by(CertificateAuthority.id)
        ).scalars()
        issuing: list[int] = []
        for ca in rows:
            if ca.status == "pending" or ca.certificate_pem is None:
                continue
            cas.append(ca.certificate_pem.encode())
            if ca.kind == "issuing":
                issuing.append(ca.id)
        for ca_id in issuing:
            published = s.get(PublishedCrl, ca_id)
            if published is None:
                continue
            der = publication.published_der(ctx.pki, published)
            crl = x509.load_der_x509_crl(der)
            crls.append(crl.public_bytes(serialization.Encoding.PEM))
    return b"".join(cas), b"".join(crls)


class BrokerSync:
    """Keeps the broker's table and trust files in step with the database."""

    def __init__(
        self,
        ctx: AppContext,
        files: BrokerFiles,
        *,
        reload: Callable[[], None] | None = None,
        max_payload: int = MAX_PAYLOAD,
        publish_crls: bool = True,
    ) -> None:
        self.ctx = ctx
        self.publish_crls = publish_crls
        self.files = files
        self.reload = reload
        self.max_payload = max_payload
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
            if len(self._refused) < 10_000:  # bounded: a flood is counted, not kept
                self._refused.append((peer, reason))

    def _state(self) -> tuple[int, tuple[object, ...]]:
        with self.ctx.db.read() as s:
            head = s.execute(select(AuditHead.seq)).scalar_one_or_none() or 0
            crl_state = tuple(
                s.execute(
                    select(
                        func.count(PublishedCrl.ca_id),
                        func.coalesce(func.sum(PublishedCrl.number), 0),
                        func.count(CertificateAuthority.id),
                    )
                    .select_from(CertificateAuthority)
                    .outerjoin(PublishedCrl, PublishedCrl.ca_id == CertificateAuthority.id)
                ).one()
            )
        return int(head), crl_state

    def _service_fingerprint(self) -> str:
        if not self.files.service_cert.exists():
            return ""
        cert = x509.load_pem_x509_certificate(self.files.service_cert.read_bytes())
        return cert.fingerprint(hashes.SHA1()).hex()  # noqa: S303 - see compile.py

    def write_table(self) -> int:
        """Rebuild ``acl.table`` now; returns how many identities it lists."""
        start = time.perf_counter()
        with self.ctx.db.read() as s:
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
        _write(self.files.table, text.encode())
        self.last_build_seconds = time.perf_counter() - start
        return len(devices)

    def write_trust(self) -> None:
        """Rewrite ``devices-ca.pem`` and ``crl.pem``."""
        cas, crls = _trust_files(self.ctx)
        _write(self.files.devices_ca, cas)
        _write(self.files.crl, crls)

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
            if self.publish_crls and publication.crls_due(self.ctx.db, self.ctx.pki):
                # Then the TLS layer: a fresh CRL makes reconnects fail at the
                # handshake instead of waiting for the publication interval.
                # The next round sees the new CRL state and reloads Mosquitto.
                # (The head read above stays the one the table was built at:
                # re-reading it here would mark changes committed meanwhile as
                # seen without rebuilding the table.)
                publication.publish_crls(self.ctx.db, self.ctx.pki)
        if crl_state != self._crl_state:
            self.write_trust()
            self._crl_state = crl_state
            changed = True
            if self.reload is not None:
                self.reload()  # Mosquitto re-reads CA and CRL files on SIGHUP.
        return changed

    def ingest_events(self) -> int:
        """Move the plugin's events into the database.

        The file is renamed first and read one round later: the plugin opens
        it per flush, so a write that raced the rename has landed by then.
        """
        stored = 0
        with self._lock:
            refused, self._refused = self._refused, []
        if refused:
            with self.ctx.db.session() as s:
                stored += service.record_handshake_refusals(s, refused)
        if self._pending_events is not None and self._pending_events.exists():
            lines = self._pending_events.read_text(errors="replace").splitlines()
            with self.ctx.db.session() as s:
                stored += service.record_acl_events(s, lines)
            self._pending_events.unlink()
        self._pending_events = None
        if self.files.events.exists():
            pending = self.files.events.with_suffix(".ingest")
            os.replace(self.files.events, pending)
            self._pending_events = pending
        return stored

    def run(self, stop: threading.Event, *, interval: float = 0.1) -> None:
        """Refresh every ``interval`` seconds and ingest events every second."""
        last_ingest = last_crl_check = 0.0
        while not stop.is_set():
            try:
                self.refresh()
                now = time.monotonic()
                if now - last_ingest >= 1.0:
                    last_ingest = now
                    self.ingest_events()
                if self.publish_crls and now - last_crl_check >= CRL_CHECK_SECONDS:
                    # Mosquitto refuses every client once a CRL passes its
                    # nextUpdate: republish in time even when nothing changes
                    # and no API process runs.
                    last_crl_check = now
                    if publication.crls_due(self.ctx.db, self.ctx.pki):
                        publication.publish_crls(self.ctx.db, self.ctx.pki)
            except Exception:  # the loop must outlive one bad round
                log.exception("broker sync round failed")
            stop.wait(interval)


def prepare(
    ctx: AppContext,
    root: Path,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_MQTT_PORT,
    service_port: int = DEFAULT_SERVICE_PORT,
) -> BrokerFiles:
    """Create or refresh everything a broker needs under ``root``.

    Raises:
        PluginBuildError: the plugin cannot be compiled here.
    """
    files = BrokerFiles(root)
    private_dir(root)
    _local_pki(files, utcnow())
    plugin = build_plugin(root / "plugin")
    _write(
        files.config,
        render_config(
            files, plugin=plugin, host=host, port=port, service_port=service_port
        ).encode(),
    )
    sync = BrokerSync(ctx, files)
    sync.write_trust()
    sync.write_table()
    _write(
        files.info,
        json.dumps(
            {
                "host": host,
                "port": port,
                "service_port": service_port,
                "ca": str(files.broker_ca),
                "service_cert": str(files.service_cert),
                "service_key": str(files.service_key),
            },
            indent=2,
        ).encode(),
    )
    return files


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM the broker when fleetward dies, however it dies
    (uvicorn re-raises SIGTERM after shutdown, skipping ``finally`` blocks)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: stop() still terminates it on a clean exit


class MosquittoProcess:
    """A Mosquitto child process on a prepared directory."""

    def __init__(
        self, files: BrokerFiles, *, on_handshake_refused: Callable[[str, str], None] | None = None
    ) -> None:
        self.files = files
        self.on_handshake_refused = on_handshake_refused
        self.proc: subprocess.Popen[str] | None = None
        self.log_lines: list[str] = []
        self._reader: threading.Thread | None = None

    @staticmethod
    def executable() -> str:
        """Path of the mosquitto binary.

        Raises:
            BrokerError: it is not installed.
        """
        found = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if found is None:
            raise BrokerError("mosquitto is not installed (scripts/bootstrap installs it)")
        return found

    def start(self, *, port: int, timeout: float = 10.0) -> None:
        """Start the broker and wait until its device port accepts connections.

        Raises:
            BrokerError: it exited or did not listen in time.
        """
        # Mosquitto block-buffers its log on a pipe; line-buffer it so refused
        # handshakes are seen as they happen.
        stdbuf = shutil.which("stdbuf")
        prefix = [stdbuf, "-oL"] if stdbuf else []
        self.proc = subprocess.Popen(
            [*prefix, self.executable(), "-c", str(self.files.config)],
            preexec_fn=_die_with_parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        import socket

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                time.sleep(0.1)
                raise BrokerError("mosquitto exited: " + " | ".join(self.log_lines[-5:]))
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise BrokerError(f"mosquitto did not listen on port {port} within {timeout} s")

    def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        peer = "unknown"
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if len(self.log_lines) > 2000:
                del self.log_lines[:1000]
            self.log_lines.append(line)
            if m := _NEW_CONN.search(line):
                peer = m.group("peer")
            elif (m := _HANDSHAKE.search(line)) and self.on_handshake_refused is not None:
                self.on_handshake_refused(peer, m.group("reason"))
            elif (m := _ACCEPT_FAILED.search(line)) and self.on_handshake_refused is not None:
                self.on_handshake_refused(m.group("peer"), m.group("reason"))

    def reload(self) -> None:
        """SIGHUP: re-read CA and CRL files."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        """Terminate the broker."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


class BrokerRuntime:
    """A prepared broker directory, a Mosquitto child and the sync loop."""

    def __init__(
        self,
        ctx: AppContext,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_MQTT_PORT,
        service_port: int = DEFAULT_SERVICE_PORT,
        interval: float = 0.1,
    ) -> None:
        self.ctx = ctx
        self.root = root
        self.host = host
        self.port = port
        self.service_port = service_port
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: threading.Thread | None = None
        self.restarts = 0  # times the supervisor brought Mosquitto back
        self.files = BrokerFiles(root)
        self.sync = BrokerSync(ctx, self.files)
        self.mosquitto = MosquittoProcess(self.files, on_handshake_refused=self.sync.note_refused)

    def start(self) -> None:
        """Prepare the files, start Mosquitto and the sync loop.

        Raises:
            BrokerError: Mosquitto did not come up.
            PluginBuildError: the plugin cannot be built here.
        """
        prepare(self.ctx, self.root, host=self.host, port=self.port, service_port=self.service_port)
        self.sync.reload = self.mosquitto.reload
        self.sync.refresh()
        self.mosquitto.start(port=self.port)
        self._thread = threading.Thread(
            target=self.sync.run,
            args=(self._stop,),
            kwargs={"interval": self.interval},
            daemon=True,
        )
        self._thread.start()
        self._watch = threading.Thread(target=self._supervise, daemon=True, name="mosquitto")
        self._watch.start()

    def _supervise(self) -> None:
        """Restart Mosquitto if it exits (devices reconnect with backoff; the
        table and trust files are on disk), and say why it exited."""
        while not self._stop.wait(SUPERVISE_EVERY_S):
            proc = self.mosquitto.proc
            if proc is None or proc.poll() is None:
                continue
            log.error(
                "mosquitto exited (%s); restarting. Last lines: %s",
                proc.returncode,
                " | ".join(self.mosquitto.log_lines[-5:]),
            )
            self.restarts += 1
            try:
                self.mosquitto.stop()
                self.mosquitto.start(port=self.port)
            except BrokerError:
                log.exception("mosquitto did not come back; trying again")

    def stop(self) -> None:
        """Stop the loop, the supervisor and the broker."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._watch is not None:
            self._watch.join(timeout=5)
        self.mosquitto.stop()
