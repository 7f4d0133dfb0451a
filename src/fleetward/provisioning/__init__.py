"""Controlled provisioning: factories, batches, key-origin attestation, enrollment records."""
