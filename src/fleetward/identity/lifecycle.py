"""Device lifecycle: which state changes are allowed.

``pending → active → quarantined | revoked | retired``; a quarantined device
can be released back to ``active``; ``revoked`` can only become ``retired``;
``retired`` is final.
"""

from __future__ import annotations

from fleetward.errors import ConflictError, InvalidInputError

__all__ = ["STATES", "check_transition"]

STATES = ("pending", "active", "quarantined", "revoked", "retired")

_ALLOWED: dict[str, frozenset[str]] = {
    "pending": frozenset({"active", "revoked", "retired"}),
    "active": frozenset({"quarantined", "revoked", "retired"}),
    "quarantined": frozenset({"active", "revoked", "retired"}),
    "revoked": frozenset({"retired"}),
    "retired": frozenset(),
}


def check_transition(current: str, new: str) -> None:
    """Raise unless a device may go from ``current`` to ``new``.

    Raises:
        InvalidInputError: ``new`` is not a state.
        ConflictError: the transition is not allowed.
    """
    if new not in STATES:
        raise InvalidInputError(f"unknown device state {new!r}; one of {', '.join(STATES)}")
    if new not in _ALLOWED[current]:
        raise ConflictError(f"a {current} device cannot become {new}")
