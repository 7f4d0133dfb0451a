"""Append-only, hash-chained, tamper-evident audit log with signed Merkle checkpoints.

The public face: other domains append in their own transaction
(:func:`append`, :func:`append_many` of :class:`Event`), the runtime signs
checkpoints, the API reads, verifies and proves. :mod:`.chain` and
:mod:`.merkle` are the pure rules; the tables stay inside this package.
"""

from fleetward.audit._search import get_entry, newest_checkpoint, search_entries
from fleetward.audit.history import checkpoints_upto, entries_about, entries_upto
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
    "entries_about",
    "entries_upto",
    "get_entry",
    "head_seq",
    "inclusion_proof",
    "list_entries",
    "newest_checkpoint",
    "record_refusal",
    "search_entries",
    "tenant_changed_since",
    "verify",
    "verify_proof",
    "verify_tenant",
]
