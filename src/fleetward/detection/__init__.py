"""Detection: pure detectors over telemetry events, alerts and automatic responses.

See ``docs/detection.md``.
"""
