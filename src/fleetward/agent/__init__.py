"""The device side: keystores, secure-element attestation, enrollment and renewal.

``fleetward-agent`` is the command; :mod:`fleetward.agent.client` is the
library the factory line and (later) the simulator run, so every device
speaks to the server through the same code.
"""
