"""Sending commands to devices through the broker, as fleetward's service identity.

The sender connects lazily to the broker's service listener with the service
certificate that ``prepare`` created (``<home>/broker/broker.json`` says
where). The broker still checks every delivery against the device's roles,
so a command that slipped past the API check would not reach the device.
"""

from __future__ import annotations

import json
import ssl
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

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
    client_id: str = "",
    subscribe: tuple[str, int] | None = None,
    on_message: Any = None,
    keepalive: int = 60,
) -> mqtt.Client:
    """A connected, looping MQTT 5 client with fleetward's service identity.

    ``subscribe`` is ``(filter, qos)``, renewed on every (re)connection.

    Raises:
        BrokerUnavailableError: no broker here, or it cannot be reached.
    """
    info = broker_info(home)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    context = ssl.create_default_context(cafile=info["ca"])
    context.load_cert_chain(info["service_cert"], info["service_key"])
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
    """One MQTT connection per process for outgoing commands."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._client: mqtt.Client | None = None
        self._lock = threading.Lock()

    def send(self, topic: str, payload: bytes, *, timeout: float = 5.0) -> None:
        """Publish at QoS 1 and wait for the broker's acknowledgement.

        Raises:
            BrokerUnavailableError: not connected or not acknowledged in time.
        """
        with self._lock:
            if self._client is None or not self._client.is_connected():
                if self._client is not None:
                    self._client.loop_stop()
                self._client = service_client(self.home)
            client = self._client
        info = client.publish(topic, payload, qos=1)
        try:
            info.wait_for_publish(timeout)
        except RuntimeError as exc:
            raise BrokerUnavailableError(f"broker did not take the command: {exc}") from exc
        if not info.is_published():
            raise BrokerUnavailableError("broker did not acknowledge the command in time")

    def close(self) -> None:
        """Disconnect."""
        with self._lock:
            if self._client is not None:
                self._client.disconnect()
                self._client.loop_stop()
                self._client = None
