"""The device side: keystores, secure-element attestation, enrollment and renewal.

``fleetward-agent`` is the command; :mod:`fleetward.agent.client` is the
library the factory line and the simulator run, so every device speaks to
the server through the same code.

The public face, what the simulator and the factory line use: enrollment and
renewal (:mod:`.client`), keystores, the simulated secure element, the MQTT
agent, the OTA client with its A/B slots, and boot evidence
(:func:`attest_device`). The agent
imports of the server only its pure wire rules (the certificate profile's
renewal messages, key-attestation statements, boot evidence, versions).
"""

from fleetward.agent._fetcher import HttpsFetcher
from fleetward.agent._tls import client_context
from fleetward.agent.attest import attest as attest_device
from fleetward.agent.attest import measure
from fleetward.agent.client import (
    IDENTITY_FILE,
    Enrolled,
    Server,
    device_server,
    enroll_devices,
    load_identity,
    renew,
    write_durably,
)
from fleetward.agent.keystore import KEYSTORES, Keystore, make_csr
from fleetward.agent.mqtt import AgentConfig, DeviceAgent, backoff, tenant_of
from fleetward.agent.ota import BootOutcome, OtaClient, Slots, install
from fleetward.agent.secure_element import ChipTray, SecureElement, ShippedChip, SimulatedVendor

__all__ = [
    "IDENTITY_FILE",
    "KEYSTORES",
    "AgentConfig",
    "BootOutcome",
    "ChipTray",
    "DeviceAgent",
    "Enrolled",
    "HttpsFetcher",
    "Keystore",
    "OtaClient",
    "SecureElement",
    "Server",
    "ShippedChip",
    "SimulatedVendor",
    "Slots",
    "attest_device",
    "backoff",
    "client_context",
    "device_server",
    "enroll_devices",
    "install",
    "load_identity",
    "make_csr",
    "measure",
    "renew",
    "tenant_of",
    "write_durably",
]
