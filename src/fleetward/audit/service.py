"""Audit use cases: append in the caller's transaction, checkpoint, verify, prove.

``append`` is called by every service that changes trust, inside the same
transaction as the change: if the change rolls back, so does its entry, and
there is no change without an entry. Appends lock the chain head row, so on
PostgreSQL concurrent writers queue on it (on SQLite the database write lock
already serialises them).

Refused attempts are recorded by :func:`record_refusal` in a transaction of
their own, after the refused change has rolled back, so the refusal leaves a
trace but no partial state.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Generator, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from fleetward.audit import merkle
from fleetward.audit.chain import (
    GENESIS,
    EntryFields,
    canonical_details,
    entry_hash,
    verify_chain,
    verify_rows,
)
from fleetward.audit.models import AuditCheckpoint, AuditEntry, AuditHead
from fleetward.errors import AuditChainError, NotFoundError, SignatureError
from fleetward.keys import Signer, verify_signature
from fleetward.store import Database, utcnow

__all__ = [
    "Event",
    "TenantVerifyReport",
    "VerifyReport",
    "append",
    "append_many",
    "checkpoint",
    "checkpoint_if_grown",
    "checkpoint_statement",
    "head_seq",
    "inclusion_proof",
    "list_entries",
    "record_refusal",
    "verify",
    "verify_proof",
    "verify_tenant",
]


_HEAD = select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1).with_for_update()
_INSERT_ENTRY = insert(AuditEntry)
_SET_HEAD = (
    update(AuditHead).where(AuditHead.id == 1).values(seq=bindparam("seq"), hash=bindparam("hash"))
)


@dataclass(frozen=True)
class Event:
    """One entry to append (see :func:`append`)."""

    actor: str
    action: str
    subject: str
    tenant_id: int | None = None
    outcome: str = "ok"
    details: dict[str, Any] | None = None


def append_many(session: Session, events: list[Event], *, now: dt.datetime | None = None) -> int:
    """Append ``events`` to the chain, in order, in the caller's transaction.

    The head row is locked once (``SELECT ... FOR UPDATE`` on PostgreSQL; on
    SQLite the write transaction already holds the database lock), the hashes
    are chained in memory, and the rows go in with one multi-row insert.

    Returns:
        The sequence number of the last entry appended.
    """
    conn = session.connection()  # Core on the session's connection: the hot path
    row = conn.execute(_HEAD).first()
    if row is None:
        seq, prev = 0, GENESIS
        conn.execute(insert(AuditHead).values(id=1, seq=0, hash=GENESIS))
    else:
        seq, prev = row[0], row[1]
    ts = now or utcnow()
    rows = []
    for event in events:
        seq += 1
        fields = EntryFields(
            seq=seq,
            ts=ts,
            tenant_id=event.tenant_id,
            actor=event.actor[:200],
            action=event.action,
            outcome=event.outcome,
            subject=event.subject[:200],
            details=canonical_details(event.details),
            prev_hash=prev,
        )
        prev = entry_hash(fields)
        rows.append({**fields.__dict__, "hash": prev})
    if rows:
        conn.execute(_INSERT_ENTRY, rows)
        conn.execute(_SET_HEAD, {"seq": seq, "hash": prev})
    return seq


def append(
    session: Session,
    *,
    actor: str,
    action: str,
    subject: str,
    tenant_id: int | None = None,
    outcome: str = "ok",
    details: dict[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> int:
    """Append one entry to the chain in the caller's transaction.

    Args:
        session: the unit of work that makes the audited change.
        actor: who acted (``token:<id>``, ``cli:<user>``, ``device:<id>``, ``system``).
        action: dotted verb, e.g. ``certificate.issue``.
        subject: what was acted on, e.g. ``device:sensor-1``.
        tenant_id: tenant the entry belongs to (``None`` for system events).
        outcome: ``ok`` or ``refused``.
        details: JSON-serialisable facts about the decision.
        now: time of the decision (defaults to the clock).

    Returns:
        The new entry's sequence number.
    """
    event = Event(
        actor=actor,
        action=action,
        subject=subject,
        tenant_id=tenant_id,
        outcome=outcome,
        details=details,
    )
    return append_many(session, [event], now=now)


def record_refusal(
    db: Database,
    *,
    actor: str,
    action: str,
    subject: str,
    reason: str,
    tenant_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Record one refused attempt in its own transaction (the attempt rolled back).

    Requests do not call this once per refusal: the runtime counts their
    refusals per key and window and writes the first and then one entry with
    the count (``fleetward.runtime.refusals``, ``AppContext.record_refusal``),
    so a flood of refused requests is not a flood of entries.
    """
    with db.session() as session:
        append(
            session,
            actor=actor,
            action=action,
            subject=subject,
            tenant_id=tenant_id,
            outcome="refused",
            details={**(details or {}), "reason": reason},
        )


def list_entries(
    session: Session, *, tenant_id: int, after: int = 0, limit: int = 100
) -> list[AuditEntry]:
    """Entries of one tenant with ``seq > after``, oldest first."""
    stmt = (
        select(AuditEntry)
        .where(AuditEntry.tenant_id == tenant_id, AuditEntry.seq > after)
        .order_by(AuditEntry.seq)
        .limit(min(limit, 1001))  # the API asks one row past its largest page (1,000)
    )
    return list(session.execute(stmt).scalars())


def checkpoint_statement(*, tree_size: int, root_hash: str, head_hash: str, ts: str) -> bytes:
    """The exact bytes a checkpoint signature covers."""
    return f"fleetward-audit-checkpoint/v1\n{tree_size}\n{root_hash}\n{head_hash}\n{ts}\n".encode()


def _iter_fields(
    session: Session, upto: int | None = None
) -> Generator[tuple[EntryFields, str], None, None]:
    stmt = select(AuditEntry).order_by(AuditEntry.seq)
    if upto is not None:
        stmt = stmt.where(AuditEntry.seq <= upto)
    result = session.execute(stmt.execution_options(yield_per=5000))
    try:
        yield from _fields_of(result.scalars())
    finally:
        # A verification that stops early must still close the server-side cursor.
        result.close()


def _fields_of(entries: Iterable[AuditEntry]) -> Iterator[tuple[EntryFields, str]]:
    for e in entries:
        yield (
            EntryFields(
                seq=e.seq,
                ts=e.ts,
                tenant_id=e.tenant_id,
                actor=e.actor,
                action=e.action,
                outcome=e.outcome,
                subject=e.subject,
                details=e.details,
                prev_hash=e.prev_hash,
            ),
            e.hash,
        )


def checkpoint(
    session: Session, *, signer: Signer, now: dt.datetime | None = None
) -> AuditCheckpoint:
    """Sign the Merkle root over every entry so far and store the checkpoint.

    The chain is verified on the way, so a checkpoint never vouches for a
    tampered log.
    """
    acc = merkle.CompactRange()
    head_hash = GENESIS
    with closing(_iter_fields(session)) as rows:
        for digest in verify_chain(rows):
            acc.append(bytes.fromhex(digest))
            head_hash = digest
    ts = (now or utcnow()).astimezone(dt.UTC)
    root_hex = acc.root().hex()
    stmt = checkpoint_statement(
        tree_size=acc.size, root_hash=root_hex, head_hash=head_hash, ts=ts.isoformat()
    )
    cp = AuditCheckpoint(
        tree_size=acc.size,
        root_hash=root_hex,
        head_hash=head_hash,
        ts=ts,
        key_id=signer.uri,
        signature=base64.b64encode(signer.sign(stmt)).decode(),
    )
    session.add(cp)
    append(
        session,
        actor="system",
        action="audit.checkpoint",
        subject=f"checkpoint:{acc.size}",
        details={"tree_size": acc.size, "root": root_hex},
        now=ts,
    )
    session.flush()
    return cp


def checkpoint_if_grown(session: Session, *, signer: Signer) -> bool:
    """Sign a checkpoint if entries came since the last; returns whether it did."""
    last = session.execute(
        select(AuditCheckpoint.tree_size).order_by(AuditCheckpoint.tree_size.desc()).limit(1)
    ).scalar()
    head = session.get(AuditHead, 1)
    # A checkpoint appends its own entry: only sign when more came.
    if head is None or head.seq <= (last or 0) + 1:
        return False
    checkpoint(session, signer=signer)
    return True


def head_seq(session: Session) -> int:
    """The sequence number of the newest entry (0 for an empty log).

    Every trust change appends an entry, so a process that keeps a derived
    view (the broker's table) polls this to learn that one happened.
    """
    return int(session.execute(select(AuditHead.seq)).scalar_one_or_none() or 0)


def tenant_changed_since(session: Session, *, tenant_id: int, after: int) -> bool:
    """Whether the tenant has an entry newer than ``after`` (a sequence number
    the caller read from :func:`head_seq` earlier): the console's event
    stream asks this only when the head moved, so it reads only the new
    entries, and never learns of another tenant's."""
    return (
        session.execute(
            select(AuditEntry.seq)
            .where(AuditEntry.seq > after, AuditEntry.tenant_id == tenant_id)
            .limit(1)
        ).first()
        is not None
    )


def _verify_signature(public_key: PublicKeyTypes, signature: bytes, data: bytes) -> None:
    if not isinstance(public_key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise AuditChainError("unsupported checkpoint key type")
    try:
        verify_signature(public_key, signature=signature, data=data)
    except SignatureError as exc:
        raise AuditChainError("checkpoint signature does not verify") from exc


def _verify_checkpoint(cp: AuditCheckpoint, public_key: PublicKeyTypes) -> None:
    stmt = checkpoint_statement(
        tree_size=cp.tree_size,
        root_hash=cp.root_hash,
        head_hash=cp.head_hash,
        ts=cp.ts.astimezone(dt.UTC).isoformat(),
    )
    try:
        signature = base64.b64decode(cp.signature, validate=True)
    except ValueError as exc:
        raise AuditChainError(f"checkpoint {cp.id} signature is not base64") from exc
    try:
        _verify_signature(public_key, signature, stmt)
    except AuditChainError as exc:
        raise AuditChainError(f"checkpoint {cp.id} (size {cp.tree_size}): {exc.detail}") from exc


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` checked (the whole installation's log)."""

    entries: int
    head_hash: str
    checkpoints: int


@dataclass(frozen=True)
class TenantVerifyReport:
    """What ``verify_tenant`` established about one tenant's entries.

    Only the tenant's own entries are counted or named: nothing here tells
    how many entries other tenants have.
    """

    entries: int  # the tenant's entries in the verified log
    checkpointed: int  # of them, those a verified signed checkpoint covers
    head_seq: int | None  # the tenant's newest entry (None: it has none)
    head_hash: str | None


@dataclass
class _Progress:
    """How far one pass over the log got; still readable after it raised."""

    size: int = 0  # entries verified (sequence, link, hash)
    head_hash: str = GENESIS
    anchored: int = 0  # tree size of the last checkpoint that matched the log
    checkpoints: int = 0  # checkpoints matched


def _walk(
    session: Session, *, public_key: PublicKeyTypes | None, progress: _Progress
) -> Iterator[EntryFields]:
    """Verify the whole log and yield each entry once it verified.

    Every entry's sequence number, link and hash are checked; each
    checkpoint's signature when the walk reaches its tree size, then its
    Merkle root and head hash against the entries so far (``progress`` is
    updated before the entry that completes a checkpoint is yielded); at the
    end, that no checkpoint covers more entries than the log holds and that
    the head row matches the last entry.

    Raises:
        AuditChainError: naming the first bad entry or checkpoint.
    """
    pending = list(
        session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size)).scalars()
    )
    acc = merkle.CompactRange()
    # Closed here, not when the garbage collector finds it: a walk that stops
    # at a bad entry keeps the rows' generator alive in the error's traceback,
    # and closing its cursor after the database is gone printed a traceback
    # ("Error closing cursor") after the verdict.
    with closing(_iter_fields(session)) as rows:
        for fields, digest in verify_rows(rows):
            acc.append(bytes.fromhex(digest))
            progress.size, progress.head_hash = acc.size, digest
            while pending and pending[0].tree_size == acc.size:
                cp = pending.pop(0)
                if public_key is not None:
                    _verify_checkpoint(cp, public_key)
                if acc.root().hex() != cp.root_hash or cp.head_hash != digest:
                    raise AuditChainError(
                        f"audit entries 1..{cp.tree_size} do not match checkpoint {cp.id}: "
                        "an entry was rewritten",
                        seq=cp.tree_size,
                    )
                progress.anchored = acc.size
                progress.checkpoints += 1
            yield fields
    if pending:
        cp = pending[0]
        if public_key is not None:
            _verify_checkpoint(cp, public_key)
        raise AuditChainError(
            f"audit entry {acc.size + 1} is missing: checkpoint {cp.id} covers "
            f"{cp.tree_size} entries, the log has {acc.size}",
            seq=acc.size + 1,
        )
    head = session.get(AuditHead, 1)
    if head is not None and (head.seq != acc.size or head.hash != progress.head_hash):
        raise AuditChainError(
            f"audit entry {acc.size + 1} is missing: the chain head records "
            f"{head.seq} entries, the log has {acc.size}",
            seq=acc.size + 1,
        )


def verify(session: Session, *, public_key: PublicKeyTypes | None) -> VerifyReport:
    """Verify the whole chain, the head row and every checkpoint.

    The installation-wide check (``fleetward audit verify``, the local
    administrator). An API caller gets :func:`verify_tenant` instead.

    Args:
        session: a read session.
        public_key: the checkpoint key; ``None`` skips checkpoint signatures
            (the roots are still recomputed).

    Raises:
        AuditChainError: naming the first bad entry or checkpoint.
    """
    progress = _Progress()
    for _ in _walk(session, public_key=public_key, progress=progress):
        pass
    return VerifyReport(
        entries=progress.size, head_hash=progress.head_hash, checkpoints=progress.checkpoints
    )


def verify_tenant(
    session: Session, *, tenant_id: int, public_key: PublicKeyTypes | None
) -> TenantVerifyReport:
    """Verify the log as one tenant may see it: the tenant's entries only.

    The hash chain and the checkpoints span the whole installation (other
    tenants' entries are links in the chain), so the whole log is walked
    exactly as :func:`verify` does; only what is reported is the tenant's.

    What a success proves: every entry chains from the genesis hash with a
    correct hash, every checkpoint's signature verifies and its Merkle root
    and head hash match the log, and the head row matches the last entry.
    So the tenant's ``checkpointed`` entries are exactly what was in the log
    when the newest checkpoint covering them was signed (none edited,
    deleted, inserted or reordered since), and its later entries are
    consistent with the chain head; those are vouched for by the database
    alone until the next checkpoint covers them.

    What a failure names: an attacker who rewrites an entry and recomputes
    the later hashes moves the visible break forward, to a later entry or to
    the next checkpoint, and a removed entry may have been the tenant's. So
    after a break nothing past the last checkpoint that matched is proven:
    the error names the tenant's first entry after it (``seq``), or no entry
    when the tenant has none there (its later entries may be missing). The
    detail never names another tenant's entry or the size of the log.

    Raises:
        AuditChainError: the log is broken where it can hide a change to
            the tenant's entries.
    """
    progress = _Progress()
    entries = checkpointed = 0
    head: tuple[int, str] | None = None
    try:
        for fields in _walk(session, public_key=public_key, progress=progress):
            if fields.tenant_id == tenant_id:
                entries += 1
                head = (fields.seq, progress.head_hash)
            if progress.anchored == fields.seq:
                checkpointed = entries
    except AuditChainError as exc:
        first = session.execute(
            select(func.min(AuditEntry.seq)).where(
                AuditEntry.tenant_id == tenant_id, AuditEntry.seq > progress.anchored
            )
        ).scalar()
        where = (
            "after the newest signed checkpoint that verifies"
            if progress.anchored
            else "and no signed checkpoint before the break verifies"
        )
        if first is None:
            raise AuditChainError(
                f"the audit log is broken {where}: this tenant's {checkpointed} checkpointed "
                "entries are proven, later entries of this tenant may be missing"
            ) from exc
        raise AuditChainError(
            f"the audit log is broken {where}: this tenant's entries from {first} on are "
            f"not proven ({checkpointed} earlier ones are)",
            seq=int(first),
        ) from exc
    return TenantVerifyReport(
        entries=entries,
        checkpointed=checkpointed,
        head_seq=head[0] if head else None,
        head_hash=head[1] if head else None,
    )


def inclusion_proof(session: Session, *, seq: int, tenant_id: int | None = None) -> dict[str, Any]:
    """Proof that entry ``seq`` is in the newest checkpoint that covers it.

    Args:
        tenant_id: for an API caller, the caller's tenant: another tenant's
            entry (or a system entry) is answered exactly as a missing one.
            ``None`` (the local CLI) proves any entry.

    Raises:
        NotFoundError: no such entry (for this tenant), or no checkpoint
            covers it yet.
    """
    entry = session.get(AuditEntry, seq)
    if entry is None or (tenant_id is not None and entry.tenant_id != tenant_id):
        raise NotFoundError(f"audit entry {seq} not found")
    cp = session.execute(
        select(AuditCheckpoint)
        .where(AuditCheckpoint.tree_size >= seq)
        .order_by(AuditCheckpoint.tree_size.desc())
        .limit(1)
    ).scalar()
    if cp is None:
        raise NotFoundError(f"no checkpoint covers audit entry {seq} yet; create one first")
    leaves = [
        bytes.fromhex(h)
        for h in session.execute(
            select(AuditEntry.hash).where(AuditEntry.seq <= cp.tree_size).order_by(AuditEntry.seq)
        ).scalars()
    ]
    proof = merkle.inclusion_proof(seq - 1, leaves)
    return {
        "seq": seq,
        "entry_hash": entry.hash,
        "leaf_index": seq - 1,
        "tree_size": cp.tree_size,
        "root_hash": cp.root_hash,
        "audit_path": [p.hex() for p in proof],
        "checkpoint": {
            "id": cp.id,
            "head_hash": cp.head_hash,
            "ts": cp.ts.astimezone(dt.UTC).isoformat(),
            "key_id": cp.key_id,
            "signature": cp.signature,
        },
    }


def verify_proof(proof: dict[str, Any], *, public_key: PublicKeyTypes) -> None:
    """Check an inclusion proof produced by :func:`inclusion_proof`, offline.

    Raises:
        AuditChainError: the checkpoint signature or the audit path is wrong.
    """
    try:
        cp = proof["checkpoint"]
        stmt = checkpoint_statement(
            tree_size=int(proof["tree_size"]),
            root_hash=str(proof["root_hash"]),
            head_hash=str(cp["head_hash"]),
            ts=str(cp["ts"]),
        )
        signature = base64.b64decode(cp["signature"], validate=True)
        path = [bytes.fromhex(p) for p in proof["audit_path"]]
        data = bytes.fromhex(proof["entry_hash"])
        root_hash = bytes.fromhex(proof["root_hash"])
        index, size = int(proof["leaf_index"]), int(proof["tree_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AuditChainError(f"malformed inclusion proof: {exc}") from exc
    _verify_signature(public_key, signature, stmt)
    merkle.verify_inclusion(
        data=data, index=index, tree_size=size, proof=path, expected_root=root_hash
    )
