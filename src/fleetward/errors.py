"""The one error tree of fleetward.

Every error raised on purpose by fleetward code derives from
:class:`FleetwardError`. The API maps the tree to RFC 9457 problem details
(``fleetward.api.problems``) and the CLI prints one line and exits non-zero.

::

    FleetwardError
    ├── InvalidInputError          400  malformed or unacceptable input
    │   └── PayloadTooLargeError   413  input over a named limit
    ├── AuthenticationError        401  missing, wrong, expired or revoked credential
    ├── PermissionDeniedError      403  authenticated, but the role does not allow it
    │   └── OutOfScopeError        403  the token's environment or factory does not reach it
    ├── NotFoundError              404  unknown id, or another tenant's id
    ├── ConflictError              409  state does not allow the change
    └── VerificationError          422  a security check failed
        ├── CertificateError
        ├── SignatureError
        ├── AttestationError
        └── AuditChainError

Security checks raise one of these; they never return a bool.
"""

from __future__ import annotations

__all__ = [
    "AttestationError",
    "AuditChainError",
    "AuthenticationError",
    "CertificateError",
    "ConflictError",
    "FleetwardError",
    "InvalidInputError",
    "NotFoundError",
    "OutOfScopeError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "SignatureError",
    "VerificationError",
]


class FleetwardError(Exception):
    """Base of every deliberate fleetward error."""

    status = 500
    title = "Internal error"
    slug = "internal"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInputError(FleetwardError):
    """Input is malformed or not acceptable."""

    status = 400
    title = "Invalid input"
    slug = "invalid-input"


class PayloadTooLargeError(InvalidInputError):
    """Input exceeds a named size limit."""

    status = 413
    title = "Payload too large"
    slug = "payload-too-large"


class AuthenticationError(FleetwardError):
    """The credential is missing, wrong, expired or revoked."""

    status = 401
    title = "Authentication required"
    slug = "unauthenticated"


class PermissionDeniedError(FleetwardError):
    """The caller is known but its role does not allow the action."""

    status = 403
    title = "Permission denied"
    slug = "forbidden"


class OutOfScopeError(PermissionDeniedError):
    """The role allows the action, but not on this target: the token's
    environment or factory scope does not reach it."""

    title = "Out of scope"
    slug = "out-of-scope"


class NotFoundError(FleetwardError):
    """The object does not exist, or belongs to another tenant."""

    status = 404
    title = "Not found"
    slug = "not-found"


class ConflictError(FleetwardError):
    """The current state does not allow the requested change."""

    status = 409
    title = "Conflict"
    slug = "conflict"


class VerificationError(FleetwardError):
    """A security verification failed."""

    status = 422
    title = "Verification failed"
    slug = "verification-failed"


class CertificateError(VerificationError):
    """A certificate or CSR failed a check."""

    title = "Certificate check failed"
    slug = "certificate"


class SignatureError(VerificationError):
    """A signature did not verify."""

    title = "Signature check failed"
    slug = "signature"


class AttestationError(VerificationError):
    """Attestation evidence did not verify."""

    title = "Attestation failed"
    slug = "attestation"


class AuditChainError(VerificationError):
    """The audit chain or a checkpoint does not verify."""

    title = "Audit chain broken"
    slug = "audit-chain"

    def __init__(self, detail: str, *, seq: int | None = None) -> None:
        super().__init__(detail)
        self.seq = seq
