"""Telemetry: one event schema for everything fleetward observes about devices.

So far the comms domain records authorization events here (denials,
refused handshakes); the detection issue builds on the same table.
"""
