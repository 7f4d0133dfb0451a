"""RFC 6962 Merkle hashing: roots, compact ranges and inclusion proofs."""

from __future__ import annotations

import hashlib

import pytest

from fleetward.audit import merkle
from fleetward.errors import AuditChainError


def leaves(n: int) -> list[bytes]:
    return [hashlib.sha256(str(i).encode()).digest() for i in range(n)]


def test_known_small_trees() -> None:
    a, b, c = leaves(3)
    la, lb, lc = (merkle.leaf_hash(x) for x in (a, b, c))

    def node(left: bytes, right: bytes) -> bytes:
        return hashlib.sha256(b"\x01" + left + right).digest()

    assert merkle.root([a]) == la
    assert merkle.root([a, b]) == node(la, lb)
    assert merkle.root([a, b, c]) == node(node(la, lb), lc)
    assert merkle.root([]) == hashlib.sha256(b"").digest()


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 31, 64])
def test_compact_range_matches_full_root_for_every_prefix(n: int) -> None:
    data = leaves(n)
    acc = merkle.CompactRange()
    for i, d in enumerate(data, start=1):
        acc.append(d)
        assert acc.root() == merkle.root(data[:i])


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 21])
def test_inclusion_proofs_verify_and_tampering_fails(n: int) -> None:
    data = leaves(n)
    root = merkle.root(data)
    for i in range(n):
        proof = merkle.inclusion_proof(i, data)
        merkle.verify_inclusion(data=data[i], index=i, tree_size=n, proof=proof, expected_root=root)
        with pytest.raises(AuditChainError):
            merkle.verify_inclusion(
                data=b"forged", index=i, tree_size=n, proof=proof, expected_root=root
            )
        if proof:
            bad = [bytes(32), *proof[1:]]
            with pytest.raises(AuditChainError):
                merkle.verify_inclusion(
                    data=data[i], index=i, tree_size=n, proof=bad, expected_root=root
                )
            with pytest.raises(AuditChainError):
                merkle.verify_inclusion(
                    data=data[i], index=i, tree_size=n, proof=proof[:-1], expected_root=root
                )
