"""fleetward's own broker connections: one identity per job.

:func:`service_client` connects to the broker's service listener as one of
fleetward's identities (:mod:`.identities`: ``ingest``, ``commands``,
``ota``) with the certificate ``prepare`` issued it
(``<home>/broker/broker.json`` says where). :class:`CommandSender` publishes
as ``commands`` (device commands) or ``ota`` (offers). The broker allows
each identity its job only, and still checks every delivery against the
device's roles, so a command that slipped past the API check would not reach
the device.
"""

from __future__ import annotations

import json
import ssl
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fleetward.errors import BrokerUnavailableError

__all__ = ["BrokerUnavailableError", "CommandSender", "broker_info", "service_client"]

# A command's payload is an operator's JSON; devices are small.
MAX_COMMAND_BYTES = 4096


def broker_info(home: Path) -> dict[str, Any]:
    """What ``prepare`` wrote about the broker of this home.

    Raises:
        BrokerUnavailableError: no broker was prepared here.
    """
    path = home / "broker" / "broker.json"
    if not path.exists():
        raise BrokerUnavailableError("no broker is configured here (run `fleetward up`)")
    info: dict[str, Any] = json.loads(path.read_text())
    return info


def service_client(
    home: Path,
    *,
    identity: str,
    client_id: str = "",
    subscribe: tuple[str, int] | None = None,
    on_message: Any = None,
    keepalive: int = 60,
) -> mqtt.Client:
    """A connected, looping MQTT 5 client as fleetward's identity ``identity``
    (one of :data:`~.identities.SERVICE_JOBS`).

    ``subscribe`` is ``(filter, qos)``, renewed on every (re)connection.

    Raises:
        BrokerUnavailableError: no broker here, it cannot be reached, or it
            issued no certificate to ``identity``.
    """
    info = broker_info(home)
    pair = info.get("identities", {}).get(identity)
    if pair is None:
        raise BrokerUnavailableError(
            f"the broker here has no service identity {identity!r} (run `fleetward up` again)"
        )
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    context = ssl.create_default_context(cafile=info["ca"])
    try:
        context.load_cert_chain(pair["cert"], pair["key"])
    except OSError as exc:  # ssl.SSLError is an OSError
        raise BrokerUnavailableError(f"service identity {identity!r}: {exc}") from exc
    client.tls_set_context(context)
    if on_message is not None:
        client.on_message = on_message
    if subscribe is not None:
        topic, qos = subscribe
        client.on_connect = lambda c, *_: c.subscribe(topic, qos=qos)
    try:
        client.connect(info["host"], int(info["service_port"]), keepalive=keepalive)
    except OSError as exc:
        raise BrokerUnavailableError(f"broker not reachable: {exc}") from exc
    client.loop_start()
    return client


class CommandSender:
    """One MQTT connection per process for outgoing messages of one identity:
    ``commands`` (device commands, the default) or ``ota`` (offers)."""

    def __init__(self, home: Path, *, identity: str = "commands") -> None:
        self.home = home
        self.identity = identity
        self._client: mqtt.Client | None = None
        self._lock = threading.Lock()
        self._refused: dict[int, int] = {}  # mid -> PUBACK reason code >= 0x80

    def _on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: Properties | None
    ) -> None:
        if rc.is_failure:
            self._refused[mid] = rc.value

    def send(self, topic: str, payload: bytes, *, timeout: float = 5.0) -> None:
        """Publish at QoS 1 and wait for the broker's acknowledgement.

        Raises:
            BrokerUnavailableError: not connected or not acknowledged in time.
        """
        with self._lock:
            if self._client is None or not self._client.is_connected():
                if self._client is not None:
                    self._client.loop_stop()
                self._client = service_client(self.home, identity=self.identity)
                self._client.on_publish = self._on_publish
            client = self._client
        info = client.publish(topic, payload, qos=1)
        try:
            info.wait_for_publish(timeout)
        except RuntimeError as exc:
            raise BrokerUnavailableError(f"broker did not take the command: {exc}") from exc
        if not info.is_published():
            raise BrokerUnavailableError("broker did not acknowledge the command in time")
        refused = self._refused.pop(info.mid, None)
        if refused is not None:
            # 0x87: the plugin refused it (not this identity's job).
            raise BrokerUnavailableError(
                f"broker refused {topic!r} for fleetward-{self.identity} (reason {refused:#x})"
            )

    def close(self) -> None:
        """Disconnect."""
        with self._lock:
            if self._client is not None:
                self._client.disconnect()
                self._client.loop_stop()
                self._client = None
