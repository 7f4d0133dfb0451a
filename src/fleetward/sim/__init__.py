"""The fleet simulator: N virtual devices running the real agent code.

Each simulated device is enrolled like a real one (factory, batch, CSR from
its own key), connects over mutual TLS to the broker with its certificate,
publishes telemetry from the agent's outbox, attests with EAT evidence over
its boot stages, and takes OTA updates through the stock TUF client into
A/B slots. Many devices share one asyncio loop per process
(:class:`SimFleet`); :class:`FleetProcesses` spreads a large fleet over
several processes. Faults (offline devices, tampered bootloaders, slow
links, failing health checks) are chosen from a seed (:class:`FleetSpec`).
It is what incident drills run against, and ``fleetward up --demo``.
See docs/sim.md.
"""

from fleetward.sim.enroll import SimulationError
from fleetward.sim.fleet import Broker, SimFleet, summary
from fleetward.sim.procs import FleetProcesses
from fleetward.sim.spec import FleetSpec, device_ids, plan, reference_measurements

__all__ = [
    "Broker",
    "FleetProcesses",
    "FleetSpec",
    "SimFleet",
    "SimulationError",
    "device_ids",
    "plan",
    "reference_measurements",
    "summary",
]
