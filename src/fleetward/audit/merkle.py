"""RFC 6962 Merkle tree hashing over audit entry hashes.

Leaves are the 32-byte entry hashes. ``MTH`` is computed the RFC 6962 way
(leaf ``H(0x00 || d)``, node ``H(0x01 || l || r)``, split at the largest power
of two below ``n``), so checkpoints and inclusion proofs can be checked with
any Certificate-Transparency-style verifier.

:class:`CompactRange` streams leaves and yields the root of every prefix in
O(log n) memory, which lets ``audit verify`` check all checkpoints in one
pass over the log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from fleetward.errors import AuditChainError

__all__ = ["CompactRange", "inclusion_proof", "leaf_hash", "root", "verify_inclusion"]


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash."""
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly below ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(leaves: Sequence[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = _split(n)
    return _node(_mth(leaves[:k]), _mth(leaves[k:]))


def root(data: Sequence[bytes]) -> bytes:
    """Merkle tree hash of ``data`` (raw leaf data, hashed here)."""
    return _mth([leaf_hash(d) for d in data])


class CompactRange:
    """Append-only accumulator of perfect subtrees; gives the root of the prefix."""

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[tuple[int, bytes]] = []  # (height, hash), heights decreasing

    def append(self, data: bytes) -> None:
        """Add one leaf (raw data)."""
        height, h = 0, leaf_hash(data)
        while self._stack and self._stack[-1][0] == height:
            _, left = self._stack.pop()
            h = _node(left, h)
            height += 1
        self._stack.append((height, h))
        self.size += 1

    def root(self) -> bytes:
        """Root of all leaves appended so far."""
        if not self._stack:
            return hashlib.sha256(b"").digest()
        acc = self._stack[-1][1]
        for _, h in reversed(self._stack[:-1]):
            acc = _node(h, acc)
        return acc


def _path(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    n = len(leaves)
    if n <= 1:
        return []
    k = _split(n)
    if index < k:
        return [*_path(index, leaves[:k]), _mth(leaves[k:])]
    return [*_path(index - k, leaves[k:]), _mth(leaves[:k])]


def inclusion_proof(index: int, data: Sequence[bytes]) -> list[bytes]:
    """Audit path (RFC 6962 ``PATH``) for leaf ``index`` in the tree over ``data``."""
    if not 0 <= index < len(data):
        raise ValueError("leaf index outside the tree")
    return _path(index, [leaf_hash(d) for d in data])


def verify_inclusion(
    *, data: bytes, index: int, tree_size: int, proof: Sequence[bytes], expected_root: bytes
) -> None:
    """Check an inclusion proof (RFC 9162 section 2.1.3.2); raise if it fails.

    Raises:
        AuditChainError: the proof does not lead to ``expected_root``.
    """
    if not 0 <= index < tree_size:
        raise AuditChainError("leaf index outside the tree")
    fn, sn = index, tree_size - 1
    r = leaf_hash(data)
    for p in proof:
        if sn == 0:
            raise AuditChainError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = _node(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise AuditChainError("inclusion proof is too short")
    if r != expected_root:
        raise AuditChainError("inclusion proof does not match the checkpoint root")
