"""Controlled provisioning: factories, batches, key-origin attestation, enrollment records.

The public face: factories, batches, vendor roots, nonces and grants
(:mod:`.service`), factory enrollment (:func:`provision`, and
:func:`enroll_devices`, the one path every enrollment route takes), and the
renewal key attestation the runtime wires into identity
(:func:`verify_renewal_attestation`). :mod:`.attestation` (key-attestation
statements) and :mod:`.batch` (batch rules) are pure and may be imported
directly.
"""

from fleetward.provisioning._paths import enroll_devices
from fleetward.provisioning._renewal import verify_renewal_attestation
from fleetward.provisioning.enroll import ProvisionItem, ProvisionResult, provision
from fleetward.provisioning.models import (
    AttestationRoot,
    EnrollmentAttempt,
    EnrollmentBatch,
    Factory,
)
from fleetward.provisioning.service import (
    MAX_OPEN_NONCES_PER_TOKEN,
    NONCE_TTL,
    attempt_record,
    attempts_csv,
    close_batch,
    counters,
    create_batch,
    create_factory,
    create_factory_token,
    device_attempts,
    get_batch,
    grant_reprovision,
    issue_nonce,
    list_attempts,
    list_batches,
    list_factories,
    list_roots,
    prune_nonces,
    register_root,
)

__all__ = [
    "MAX_OPEN_NONCES_PER_TOKEN",
    "NONCE_TTL",
    "AttestationRoot",
    "EnrollmentAttempt",
    "EnrollmentBatch",
    "Factory",
    "ProvisionItem",
    "ProvisionResult",
    "attempt_record",
    "attempts_csv",
    "close_batch",
    "counters",
    "create_batch",
    "create_factory",
    "create_factory_token",
    "device_attempts",
    "enroll_devices",
    "get_batch",
    "grant_reprovision",
    "issue_nonce",
    "list_attempts",
    "list_batches",
    "list_factories",
    "list_roots",
    "provision",
    "prune_nonces",
    "register_root",
    "verify_renewal_attestation",
]
