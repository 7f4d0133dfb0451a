"""The one error tree of fleetward.

Every exception class in fleetward lives here and derives from
:class:`FleetwardError`; a test holds the rest of ``src/`` to it. Each class
has a stable, machine-readable :attr:`~FleetwardError.code`: the API answers
with RFC 9457 problem details whose ``type`` is
``urn:fleetward:problem:<code>`` (``fleetward.api.problems``), clients branch
on it, and the CLI prints one line and exits non-zero. A code never changes
once released; a new kind of failure gets a new class and a new code.
Every class defines a code of its own and no two share one
(:meth:`FleetwardError.__init_subclass__` refuses a duplicate at import;
``tests/test_errors.py`` checks the rest).

::

    class                                status  code
    FleetwardError                        500    internal
    ├── InvalidInputError                 400    invalid-input
    │   ├── PayloadTooLargeError          413    payload-too-large
    │   └── UnevaluableVersionError       400    unevaluable-version
    ├── AuthenticationError               401    unauthenticated
    │   ├── ClientCertificateRequiredError 401   client-certificate-required
    │   └── UntrustedCertificateHeaderError 401  untrusted-certificate-header
    ├── TooManyRequestsError              429    too-many-requests
    ├── PermissionDeniedError             403    forbidden
    │   ├── OutOfScopeError               403    out-of-scope
    │   └── OutsideBatchError             403    outside-batch
    ├── NotFoundError                     404    not-found
    ├── ConflictError                     409    conflict
    │   ├── DuplicateEnrollmentError      409    duplicate-enrollment
    │   └── BatchUnusableError            409    batch-unusable
    ├── VerificationError                 422    verification-failed
    │   ├── CertificateError              422    certificate
    │   ├── SignatureError                422    signature
    │   ├── AttestationError              422    attestation
    │   │   ├── UnattestedKeyError        422    unattested-key
    │   │   └── NonceError                422    attestation-nonce
    │   ├── AuditChainError               422    audit-chain
    │   └── UpdateRefusedError            422    update-refused (device side)
    ├── UnavailableError                  503    unavailable
    │   ├── BrokerError                   503    broker
    │   │   └── BrokerUnavailableError    503    broker-unavailable
    │   └── PluginBuildError              503    plugin-build
    ├── ServerRefusedError                any    server-refused (device side)
    └── SimulationError                   500    simulation-failed

In words: bad input (400/413); no or a bad credential (401), or too many
bad ones from one source or for one identity (429); a role or scope that
does not reach (403); nothing there, or another tenant's (404);
a state that forbids the change (409); a security check that failed (422);
a component fleetward relies on (the broker, a C compiler) that is missing
or down (503). ``ServerRefusedError`` is the agent's view of a problem the
server answered with, and carries that answer's status.

Two problem codes come from the API layer rather than from a class:
``invalid-request`` (the request does not match the route's schema) and
``http-<status>`` (routing and protocol errors such as 404 for an unknown
path or 405).

Security checks raise one of these; they never return a bool. A caller that
needs to tell failures apart uses the class (or its ``code``), never the
message text, which is for people.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AttestationError",
    "AuditChainError",
    "AuthenticationError",
    "BatchUnusableError",
    "BrokerError",
    "BrokerUnavailableError",
    "CertificateError",
    "ClientCertificateRequiredError",
    "ConflictError",
    "DuplicateEnrollmentError",
    "FleetwardError",
    "InvalidInputError",
    "NonceError",
    "NotFoundError",
    "OutOfScopeError",
    "OutsideBatchError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PluginBuildError",
    "ServerRefusedError",
    "SignatureError",
    "SimulationError",
    "TooManyRequestsError",
    "UnattestedKeyError",
    "UnavailableError",
    "UntrustedCertificateHeaderError",
    "UpdateRefusedError",
    "VerificationError",
    "codes",
]

_CODES: dict[str, type[FleetwardError]] = {}


class FleetwardError(Exception):
    """Base of every deliberate fleetward error.

    Attributes:
        status: The HTTP status the API answers with.
        title: A short, fixed summary of the kind of problem.
        code: Stable machine-readable identifier (the problem ``type`` suffix).
        detail: What happened this time, for people.
    """

    status: int = 500
    title: ClassVar[str] = "Internal error"
    code: ClassVar[str] = "internal"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # Two classes with one code would answer with one problem type:
        # clients could not tell them apart. (A class that inherits its
        # parent's code has the same flaw; tests/test_errors.py finds those.)
        if "code" not in cls.__dict__:
            return
        other = _CODES.get(cls.code)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise TypeError(f"{cls.__qualname__}: code {cls.code!r} is {other.__qualname__}'s")
        _CODES[cls.code] = cls

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


_CODES[FleetwardError.code] = FleetwardError


def codes() -> dict[str, type[FleetwardError]]:
    """Every error code and its class (a copy)."""
    return dict(_CODES)


class InvalidInputError(FleetwardError):
    """Input is malformed or not acceptable."""

    status = 400
    title = "Invalid input"
    code = "invalid-input"


class PayloadTooLargeError(InvalidInputError):
    """Input exceeds a named size limit."""

    status = 413
    title = "Payload too large"
    code = "payload-too-large"


class UnevaluableVersionError(InvalidInputError):
    """A version decision cannot be made: a version that does not parse in
    its ecosystem's order, or a range that gives none (GIT-only)."""

    title = "Unevaluable version"
    code = "unevaluable-version"


class AuthenticationError(FleetwardError):
    """The credential is missing, wrong, expired or revoked."""

    status = 401
    title = "Authentication required"
    code = "unauthenticated"


class ClientCertificateRequiredError(AuthenticationError):
    """A device route was called without a device's TLS client certificate
    (an operator token does not stand in for one)."""

    title = "Client certificate required"
    code = "client-certificate-required"


class UntrustedCertificateHeaderError(AuthenticationError):
    """A client-certificate header came from an address that is not a trusted proxy."""

    title = "Certificate header from an untrusted address"
    code = "untrusted-certificate-header"


class TooManyRequestsError(FleetwardError):
    """Too many failed authentications from this source or for this claimed
    identity: refused, before any work, until ``retry_after`` seconds pass
    (the API answers 429 with a ``Retry-After`` header)."""

    status = 429
    title = "Too many requests"
    code = "too-many-requests"

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = max(1, int(retry_after))


class PermissionDeniedError(FleetwardError):
    """The caller is known but its role does not allow the action."""

    status = 403
    title = "Permission denied"
    code = "forbidden"


class OutOfScopeError(PermissionDeniedError):
    """The role allows the action, but not on this target: the token's
    environment or factory scope does not reach it."""

    title = "Out of scope"
    code = "out-of-scope"


class OutsideBatchError(PermissionDeniedError):
    """The device id is not one the enrollment batch authorises."""

    title = "Device outside batch"
    code = "outside-batch"


class NotFoundError(FleetwardError):
    """The object does not exist, or belongs to another tenant."""

    status = 404
    title = "Not found"
    code = "not-found"


class ConflictError(FleetwardError):
    """The current state does not allow the requested change."""

    status = 409
    title = "Conflict"
    code = "conflict"


class DuplicateEnrollmentError(ConflictError):
    """The device was provisioned before and has no re-provisioning grant."""

    title = "Already provisioned"
    code = "duplicate-enrollment"


class BatchUnusableError(ConflictError):
    """The enrollment batch is closed, expired or exhausted."""

    title = "Batch unusable"
    code = "batch-unusable"


class VerificationError(FleetwardError):
    """A security verification failed."""

    status = 422
    title = "Verification failed"
    code = "verification-failed"


class CertificateError(VerificationError):
    """A certificate or CSR failed a check."""

    title = "Certificate check failed"
    code = "certificate"


class SignatureError(VerificationError):
    """A signature did not verify."""

    title = "Signature check failed"
    code = "signature"


class AttestationError(VerificationError):
    """Attestation evidence did not verify."""

    title = "Attestation failed"
    code = "attestation"


class UnattestedKeyError(AttestationError):
    """A production certificate was asked for a key nobody attested."""

    title = "Unattested key refused"
    code = "unattested-key"


class NonceError(AttestationError):
    """The statement's nonce is not the fresh, unused one the server issued."""

    title = "Attestation nonce refused"
    code = "attestation-nonce"


class AuditChainError(VerificationError):
    """The audit chain or a checkpoint does not verify."""

    title = "Audit chain broken"
    code = "audit-chain"

    def __init__(self, detail: str, *, seq: int | None = None) -> None:
        super().__init__(detail)
        self.seq = seq


class UpdateRefusedError(VerificationError):
    """The device refused an update (wrong hardware, not newer, not signed)."""

    title = "Update refused"
    code = "update-refused"


class UnavailableError(FleetwardError):
    """A component fleetward relies on (broker, compiler) is missing or down."""

    status = 503
    title = "Unavailable"
    code = "unavailable"


class BrokerError(UnavailableError):
    """Mosquitto could not be configured, started or reached."""

    title = "Broker error"
    code = "broker"


class BrokerUnavailableError(BrokerError):
    """No broker is configured for this installation, or it cannot be reached."""

    title = "Broker unavailable"
    code = "broker-unavailable"


class PluginBuildError(UnavailableError):
    """The C compiler or the Mosquitto/OpenSSL headers are missing or failed."""

    title = "Broker plugin not built"
    code = "plugin-build"


class ServerRefusedError(FleetwardError):
    """Device side: the server answered with a problem (``status`` is its status)."""

    title = "Refused by the server"
    code = "server-refused"

    def __init__(self, detail: str, *, status: int) -> None:
        super().__init__(detail)
        self.status = status


class SimulationError(FleetwardError):
    """The simulated fleet could not be set up or did not behave as asked."""

    title = "Simulation failed"
    code = "simulation-failed"
