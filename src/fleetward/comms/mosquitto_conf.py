"""The broker's configuration: its files, their rendering, and its own PKI.

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

Nothing here reads the database: :mod:`.sync` writes the files that follow
it (``acl.table``, ``devices-ca.pem``, ``crl.pem``), :mod:`.mosquitto` runs
the broker.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetward._files import private_dir, write_private
from fleetward.comms.plugin import build_plugin

__all__ = [
    "DEFAULT_MQTT_PORT",
    "DEFAULT_SERVICE_PORT",
    "MAX_PACKET",
    "MAX_PAYLOAD",
    "SERVICE_USERNAME",
    "BrokerFiles",
    "render_config",
    "write_config",
    "write_file",
]

DEFAULT_MQTT_PORT = 8883
DEFAULT_SERVICE_PORT = 8884
# The largest PUBLISH payload a device may send (the plugin denies and counts
# larger ones). Telemetry and boot evidence are small; firmware travels over
# HTTP(S), not MQTT.
MAX_PAYLOAD = 64 * 1024
# Mosquitto's own hard limit on any packet: past it the client is dropped.
MAX_PACKET = 256 * 1024
SERVICE_CN = "fleetward-broker-service"
# use_subject_as_username renders the subject per RFC 2253.
SERVICE_USERNAME = f"CN={SERVICE_CN}"


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


def write_file(path: Path, data: bytes) -> None:
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
    write_file(files.server_key, server_key)
    write_file(files.server_cert, server_pem)
    write_file(files.service_key, service_key)
    write_file(files.service_cert, service_pem)
    write_file(files.broker_ca, ca.public_bytes(serialization.Encoding.PEM))


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


def write_config(
    root: Path,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_MQTT_PORT,
    service_port: int = DEFAULT_SERVICE_PORT,
) -> BrokerFiles:
    """Create or refresh the configuration, the broker's PKI, the plugin and
    ``broker.json`` under ``root`` (the trust files and the table are
    :mod:`.sync`'s).

    Raises:
        PluginBuildError: the plugin cannot be compiled here.
    """
    files = BrokerFiles(root)
    private_dir(root)
    _local_pki(files, dt.datetime.now(dt.UTC))
    plugin = build_plugin(root / "plugin")
    write_file(
        files.config,
        render_config(
            files, plugin=plugin, host=host, port=port, service_port=service_port
        ).encode(),
    )
    write_file(
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
