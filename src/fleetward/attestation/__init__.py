"""Boot attestation: nonces, EAT evidence signed by the device key, appraisal.

See ``docs/attestation.md``.
"""
