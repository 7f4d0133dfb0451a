"""The broker's configuration: its files and their rendering.

Mosquitto is told (see :func:`render_config`):

- **one device listener per environment** (test, production, drill) on TLS,
  each requiring a certificate from **that environment's** issuing CAs
  (``devices-ca-<environment>.pem``: the issuing CAs as explicitly trusted
  anchors and no root, so a certificate of another environment of the same
  tenant finds no anchor and fails the handshake), checking ``crl.pem``, and
  taking the certificate subject as the MQTT identity
  (``use_subject_as_username``) and that identity as the client id
  (``use_username_as_clientid``), so no client can take over another's
  session and equal device ids of two tenants never collide;
- a **service listener** for fleetward's own identities (one per job, see
  :mod:`.identities`), trusting only fleetward's service CA, whose client
  certificates no device holds (and whose CA no device listener trusts);
- the fleetward plugin for every authorization decision.

Every listener presents the server certificate of fleetward's service CA
(:class:`fleetward.identity.ServicePki`): the CA devices and fleetward
verify the broker with (``broker-ca.pem``, also announced by
``GET /api/v1/comms/broker``).

Nothing here reads the database: :mod:`.sync` writes the files that follow
it (``acl.table``, ``devices-ca-<environment>.pem``, ``crl.pem``),
:mod:`.mosquitto` runs the broker.
"""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fleetward._files import private_dir, write_private
from fleetward.comms.identities import SERVICE_JOBS
from fleetward.comms.plugin import build_plugin
from fleetward.identity import ServicePki

__all__ = [
    "DEFAULT_PORTS",
    "DEFAULT_SERVICE_PORT",
    "ENVIRONMENTS",
    "MAX_PACKET",
    "MAX_PAYLOAD",
    "BrokerFiles",
    "Listeners",
    "render_config",
    "write_config",
    "write_file",
]

# The device listeners, one per environment (fleetward.tenancy.roles.ENVIRONMENTS).
ENVIRONMENTS = ("test", "production", "drill")
# Their default ports (the settings' defaults: FLEETWARD_MQTT_*_PORT).
DEFAULT_PORTS: Mapping[str, int] = {"production": 8883, "test": 8885, "drill": 8886}
DEFAULT_SERVICE_PORT = 8884
# The largest PUBLISH payload a device may send (the plugin denies and counts
# larger ones). Telemetry and boot evidence are small; firmware travels over
# HTTP(S), not MQTT.
MAX_PAYLOAD = 64 * 1024
# Mosquitto's own hard limit on any packet: past it the client is dropped.
MAX_PACKET = 256 * 1024


@dataclass(frozen=True)
class Listeners:
    """Where the broker listens: one device port per environment and the
    service port, all on ``host``.

    Raises:
        ValueError: an environment is missing or unknown, a port is out of
            range, or two listeners share a port.
    """

    host: str
    ports: Mapping[str, int]
    service_port: int

    def __post_init__(self) -> None:
        if set(self.ports) != set(ENVIRONMENTS):
            raise ValueError(f"a device listener per environment: {', '.join(ENVIRONMENTS)}")
        every = [*self.ports.values(), self.service_port]
        if any(not isinstance(p, int) or not 0 < p < 65536 for p in every):
            raise ValueError("listener ports are 1-65535")
        if len(set(every)) != len(every):
            raise ValueError("every listener needs its own port")
        object.__setattr__(self, "ports", {env: self.ports[env] for env in ENVIRONMENTS})

    @classmethod
    def defaults(cls, host: str = "127.0.0.1") -> Listeners:
        """The default ports on ``host``."""
        return cls(host=host, ports=dict(DEFAULT_PORTS), service_port=DEFAULT_SERVICE_PORT)

    def as_dict(self) -> dict[str, dict[str, str | int]]:
        """Every device listener by environment (what discovery announces)."""
        return {env: {"host": self.host, "port": port} for env, port in self.ports.items()}


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

    def devices_ca(self, environment: str) -> Path:
        """The trust anchors of one environment's device listener."""
        if environment not in ENVIRONMENTS:
            raise ValueError(f"unknown environment {environment!r}")
        return self.root / f"devices-ca-{environment}.pem"

    @property
    def crl(self) -> Path:
        return self.root / "crl.pem"

    @property
    def broker_ca(self) -> Path:
        """fleetward's service CA: what clients verify the broker with, and
        what the service listener trusts client certificates of."""
        return self.root / "broker-ca.pem"

    @property
    def info(self) -> Path:
        return self.root / "broker.json"


def write_file(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically (readers see the old or the new file), mode
    0600: Mosquitto runs as the user who runs fleetward (see render_config),
    so no file here needs to be wider."""
    write_private(path, data)


def render_config(
    files: BrokerFiles, *, plugin: Path, listeners: Listeners, server: tuple[Path, Path]
) -> str:
    """The mosquitto.conf fleetward runs (and hands to operators).

    Args:
        files: The broker's directory.
        plugin: The compiled plugin.
        listeners: Where to listen.
        server: The server certificate and key (PEM files).
    """
    # Started as root, Mosquitto would switch to user "mosquitto", who cannot
    # read fleetward's 0600 keys; it runs as whoever runs fleetward instead.
    user = pwd.getpwuid(os.geteuid()).pw_name
    cert, key = server
    host = listeners.host
    devices = "".join(
        f"""
# Devices of the {env} environment: a certificate of one of its issuing CAs
# (no other environment's), checked against the CRL; the subject is the
# identity and the client id (no takeover). Mosquitto re-reads this cafile
# and the CRL on SIGHUP (only for listeners with a crlfile).
listener {port} {host}
certfile {cert}
keyfile {key}
cafile {files.devices_ca(env)}
crlfile {files.crl}
require_certificate true
use_subject_as_username true
use_username_as_clientid true
tls_version tlsv1.2
"""
        for env, port in listeners.ports.items()
    )
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
{devices}
# fleetward itself: one identity per job (ingest, commands, ota), each
# certified by fleetward's service CA, which no device listener trusts. The
# plugin allows each identity its job only. Several connections may share an
# identity (API processes, workers), so they keep their own client ids here.
listener {listeners.service_port} {host}
certfile {cert}
keyfile {key}
cafile {files.broker_ca}
require_certificate true
use_subject_as_username true
tls_version tlsv1.2
"""


def write_config(root: Path, *, service_pki: ServicePki, listeners: Listeners) -> BrokerFiles:
    """Create or refresh the configuration, the plugin, the service CA copy
    and ``broker.json`` under ``root`` (the trust files and the table are
    :mod:`.sync`'s). The server certificate and the service identities'
    certificates come from ``service_pki`` (issued on first use).

    Raises:
        PluginBuildError: the plugin cannot be compiled here.
    """
    files = BrokerFiles(root)
    private_dir(root)
    server = service_pki.server()
    identities = {job: service_pki.client(job) for job in SERVICE_JOBS}
    write_file(files.broker_ca, service_pki.ca_pem)
    plugin = build_plugin(root / "plugin")
    write_file(
        files.config,
        render_config(
            files, plugin=plugin, listeners=listeners, server=(server.cert, server.key)
        ).encode(),
    )
    write_file(
        files.info,
        json.dumps(
            {
                # host/port: the production listener, for clients of the
                # single-listener layout.
                "host": listeners.host,
                "port": listeners.ports["production"],
                "listeners": listeners.as_dict(),
                "service_port": listeners.service_port,
                "ca": str(files.broker_ca),
                "identities": {
                    job: {"cert": str(pair.cert), "key": str(pair.key)}
                    for job, pair in identities.items()
                },
            },
            indent=2,
        ).encode(),
    )
    return files
