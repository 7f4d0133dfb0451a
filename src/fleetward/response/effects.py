"""The real side effects of a playbook run: MQTT commands and webhooks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from fleetward.comms import CommandSender

__all__ = ["WEBHOOK_TIMEOUT", "LiveEffects"]

WEBHOOK_TIMEOUT = 5.0  # seconds; a slow receiver must not hold up a containment


class LiveEffects:
    """Commands through fleetward's broker connection, webhooks over HTTP."""

    def __init__(self, home: Path) -> None:
        self._home = home
        self._sender: CommandSender | None = None

    def command(self, tenant: str, device_id: str, name: str) -> None:
        """Publish ``fw/<tenant>/<device>/cmd/<name>`` at QoS 1.

        Raises:
            BrokerUnavailableError: the broker did not take it.
        """
        if self._sender is None:
            self._sender = CommandSender(self._home)
        self._sender.send(f"fw/{tenant}/{device_id}/cmd/{name}", b"{}")

    def webhook(self, url: str, payload: dict[str, Any]) -> int:
        """POST ``payload`` as JSON; returns the HTTP status (redirects not followed)."""
        resp = httpx.post(
            url,
            content=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", "User-Agent": "fleetward-playbook"},
            timeout=WEBHOOK_TIMEOUT,
            follow_redirects=False,
        )
        return resp.status_code

    def close(self) -> None:
        """Drop the broker connection."""
        if self._sender is not None:
            self._sender.close()
            self._sender = None
