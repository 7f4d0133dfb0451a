"""The hash chain: how an entry is hashed and how a sequence of rows is checked.

Pure functions over plain values. An entry's hash covers its sequence number,
time, tenant, actor, action, outcome, subject, details and the previous
entry's hash, in a canonical JSON encoding. Editing any field, deleting a row
or swapping two rows breaks the chain at the first affected entry, which
:func:`verify_chain` names.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fleetward.errors import AuditChainError

__all__ = [
    "GENESIS",
    "EntryFields",
    "canonical_details",
    "entry_hash",
    "verify_chain",
    "verify_rows",
]

GENESIS = "0" * 64


@dataclass(frozen=True)
class EntryFields:
    """The hashed content of one audit entry."""

    seq: int
    ts: dt.datetime
    tenant_id: int | None
    actor: str
    action: str
    outcome: str
    subject: str
    details: str
    prev_hash: str


def canonical_details(details: dict[str, Any] | None) -> str:
    """Canonical JSON for the details dict (sorted keys, no spaces)."""
    return json.dumps(details or {}, sort_keys=True, separators=(",", ":"), default=str)


def entry_hash(f: EntryFields) -> str:
    """SHA-256 (hex) of the canonical encoding of ``f``."""
    body = json.dumps(
        [
            f.seq,
            f.ts.astimezone(dt.UTC).isoformat(timespec="microseconds"),
            f.tenant_id,
            f.actor,
            f.action,
            f.outcome,
            f.subject,
            f.details,
            f.prev_hash,
        ],
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()


def verify_chain(
    rows: Iterable[tuple[EntryFields, str]], *, start_seq: int = 1, start_hash: str = GENESIS
) -> Iterator[str]:
    """Check rows (in ``seq`` order) and yield each verified hash.

    As :func:`verify_rows`, yielding only the hashes.
    """
    for _, stored in verify_rows(rows, start_seq=start_seq, start_hash=start_hash):
        yield stored


def verify_rows(
    rows: Iterable[tuple[EntryFields, str]], *, start_seq: int = 1, start_hash: str = GENESIS
) -> Iterator[tuple[EntryFields, str]]:
    """Check rows (in ``seq`` order) and yield each verified ``(fields, hash)``.

    A row is yielded only once it is checked, and before the next row is
    read, so a caller sees exactly the prefix that verified.

    Args:
        rows: ``(fields, stored_hash)`` pairs ordered by sequence number.
        start_seq: sequence number the first row must carry.
        start_hash: hash the first row must chain from.

    Raises:
        AuditChainError: naming the first entry that is missing, out of
            order, edited, or not chained to its predecessor.
    """
    expected_seq, prev = start_seq, start_hash
    for fields, stored in rows:
        if fields.seq != expected_seq:
            what = "missing" if fields.seq > expected_seq else "out of order"
            raise AuditChainError(
                f"audit entry {expected_seq} is {what} (found {fields.seq} in its place)",
                seq=expected_seq,
            )
        if fields.prev_hash != prev:
            raise AuditChainError(
                f"audit entry {fields.seq} does not chain to entry {fields.seq - 1}",
                seq=fields.seq,
            )
        if entry_hash(fields) != stored:
            raise AuditChainError(
                f"audit entry {fields.seq} was modified (hash mismatch)", seq=fields.seq
            )
        prev = stored
        expected_seq += 1
        yield fields, stored
