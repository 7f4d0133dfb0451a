"""Append-only, hash-chained, tamper-evident audit log with signed Merkle checkpoints.

The public face: other domains append in their own transaction
(:func:`append`, :func:`append_many` of :class:`Event`), the runtime signs
checkpoints, the API reads, verifies and proves. :mod:`.chain` and
:mod:`.merkle` are the pure rules; the tables stay inside this package.
"""

from fleetward.audit.history import checkpoints_upto, entries_upto
from fleetward.audit.models import AuditCheckpoint, AuditEntry
from fleetward.audit.service import (
    Event,
    TenantVerifyReport,
    VerifyReport,
    append,
    append_many,
    checkpoint,
    checkpoint_if_grown,
    checkpoint_statement,
    head_seq,
    inclusion_proof,
    list_entries,
    record_refusal,
    tenant_changed_since,
    verify,
    verify_proof,
    verify_tenant,
)

__all__ = [
    "AuditCheckpoint",
    "AuditEntry",
    "Event",
    "TenantVerifyReport",
    "VerifyReport",
    "append",
    "append_many",
    "checkpoint",
    "checkpoint_if_grown",
    "checkpoint_statement",
    "checkpoints_upto",
    "entries_upto",
    "head_seq",
    "inclusion_proof",
    "list_entries",
    "record_refusal",
    "tenant_changed_since",
    "verify",
    "verify_proof",
    "verify_tenant",
]
