"""Append-only, hash-chained, tamper-evident audit log with signed Merkle checkpoints."""
