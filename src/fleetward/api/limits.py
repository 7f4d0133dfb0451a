"""Request-body limits, enforced before the body is read: one pure ASGI middleware.

Every request is held to a named byte limit chosen by its method and route
(:data:`ROUTE_LIMITS`, one table for both planes; :data:`DEFAULT` for every
route the table does not name, including unknown paths and methods that
normally carry no body). :class:`BodyLimits` sits outside the application,
before routing, authentication and parsing:

1. A ``Content-Length`` over the limit is answered at once with a 413
   ``payload-too-large`` problem (RFC 9457, as :mod:`fleetward.api.problems`
   writes them) and ``Connection: close``. The application is never called
   and not one byte of the body is read by it; uvicorn discards what the
   client still sends until the connection closes.
2. A body without a length (chunked) or longer than it claimed is counted as
   it streams through ``receive``. The moment the count passes the limit the
   same 413 goes out, and the application's ``receive`` raises (a 413
   ``HTTPException``, which FastAPI passes on instead of turning it into a
   400), so it unwinds without having buffered more than the limit. Whatever
   it then tries to send is dropped: the client already has its answer.

The limits are sized from the domain's own named limits (a CSR, an OCSP
request, an SBOM, a firmware image, a batch), so a change there is a change
here; a route whose input is small gets a small limit, the few that take
uploads a large one. ``tests/api/test_limits.py`` walks both apps' routes:
every body-taking route has a limit, and every table entry names a route.

Refusals are counted in ``fleetward_refusals_total{code="payload-too-large"}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetward import identity, observe, telemetry
from fleetward.api import problems
from fleetward.attestation.evidence import MAX_EVIDENCE_BYTES
from fleetward.errors import PayloadTooLargeError
from fleetward.identity.renewal import MAX_ATTESTATION_BYTES, MAX_CERT_BYTES
from fleetward.identity.revocation import MAX_OCSP_REQUEST_BYTES
from fleetward.ota import release
from fleetward.telemetry.ingest import MAX_FIELDS_BYTES

__all__ = [
    "DEFAULT",
    "ROUTE_LIMITS",
    "BodyLimit",
    "BodyLimits",
    "install",
    "limit_for",
]

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class BodyLimit:
    """A named limit on one request body, in bytes."""

    name: str
    bytes: int

    def __post_init__(self) -> None:
        if not isinstance(self.bytes, int) or isinstance(self.bytes, bool):
            raise TypeError("bytes must be an int")
        if self.bytes < 0:
            raise ValueError("bytes must not be negative")


def _b64(n: int) -> int:
    """Characters of the base64 of ``n`` bytes (PEM and EST bodies are base64)."""
    return (n + 2) // 3 * 4


# A JSON body of an ordinary route: a few fields, a list of a few hundred
# ids, a policy document. More is not a request any route here expects.
DEFAULT = BodyLimit("json", 1 * MiB)

# What a JSON envelope, field names and line breaks add around the payload
# of a small route.
ENVELOPE = 4 * KiB

# EST simple(re)enroll: the base64 of one CSR (the route itself refuses past
# twice MAX_CSR_BYTES; this is that limit, enforced before the read).
EST_CSR = BodyLimit("est-csr", identity.MAX_CSR_BYTES * 2)
# Renewal: the current certificate, a CSR (PEM), a proof signature and a key
# attestation statement, each at its own limit, in one JSON object.
RENEW = BodyLimit(
    "renew",
    _b64(MAX_CERT_BYTES) * 2  # RenewIn.certificate: up to 32 KiB of PEM
    + identity.MAX_CSR_BYTES * 2  # RenewIn.csr
    + 2 * KiB  # RenewIn.proof
    + MAX_ATTESTATION_BYTES
    + ENVELOPE,
)
# OCSP POST: one DER OCSPRequest; the route refuses past the same number.
OCSP = BodyLimit("ocsp", MAX_OCSP_REQUEST_BYTES)
# Attestation evidence: one statement (a string of at most MAX_EVIDENCE_BYTES).
EVIDENCE = BodyLimit("evidence", MAX_EVIDENCE_BYTES + ENVELOPE)
# A device's own telemetry post: a handful of small events, never the full
# MAX_EVENTS_PER_REQUEST at MAX_FIELDS_BYTES each (a device sends as it goes).
DEVICE_TELEMETRY = BodyLimit("device-telemetry", 256 * KiB)
# Operator-side event import: MAX_EVENTS_PER_REQUEST events, each with a
# reading of at most MAX_FIELDS_BYTES and its envelope (device, type, time).
TELEMETRY_BATCH = BodyLimit(
    "telemetry-batch",
    telemetry.MAX_EVENTS_PER_REQUEST * (MAX_FIELDS_BYTES + 256),
)
# Batch enrollment (REST and factory batches): MAX_BATCH items, each a PEM CSR
# with an optional key attestation; 8 KiB covers a P-384 or RSA-4096 CSR with
# a statement and its chain. A batch of larger items is sent in parts.
BATCH_ITEM_BYTES = 8 * KiB
BATCH = BodyLimit("enrollment-batch", identity.MAX_BATCH * BATCH_ITEM_BYTES)
# Bulk revocation: up to MAX_COHORT device ids (64 characters, quoted, a comma).
COHORT = BodyLimit("revocation-cohort", identity.MAX_COHORT * 72 + ENVELOPE)
# A release upload (multipart): the firmware image and its SBOM at their own
# limits, plus the form's small fields (product, version, hardware ids,
# measurements: a few KiB) and multipart boundaries.
RELEASE_UPLOAD = BodyLimit(
    "release-upload", release.MAX_ARTIFACT_BYTES + release.MAX_SBOM_BYTES + 64 * KiB
)

# A feed file an operator downloaded (OSV all.zip of one ecosystem, an NVD
# year, the KEV catalog, the EPSS CSV); bigger feeds go through the CLI,
# which reads the file where it lies (``fleetward vulns import``).
VULN_FEED = BodyLimit("vuln-feed", 256 * MiB)

ROUTE_LIMITS: Mapping[tuple[str, str], BodyLimit] = {
    ("POST", "/.well-known/est/simpleenroll"): EST_CSR,
    ("POST", "/.well-known/est/{label}/simpleenroll"): EST_CSR,
    ("POST", "/.well-known/est/simplereenroll"): EST_CSR,
    ("POST", "/.well-known/est/{label}/simplereenroll"): EST_CSR,
    ("POST", "/api/v1/renew"): RENEW,
    ("POST", "/ocsp"): OCSP,
    ("POST", "/api/v1/attestation/{tenant}/{device_id}/evidence"): EVIDENCE,
    ("POST", "/api/v1/device/telemetry"): DEVICE_TELEMETRY,
    ("POST", "/api/v1/telemetry/events"): TELEMETRY_BATCH,
    ("POST", "/api/v1/enrollments"): BATCH,
    ("POST", "/api/v1/provisioning/batches/{batch_id}/enroll"): BATCH,
    ("POST", "/api/v1/revocations/devices"): COHORT,
    ("POST", "/api/v1/releases"): RELEASE_UPLOAD,
    ("POST", "/api/v1/vulns/imports"): VULN_FEED,
}
"""The routes whose limit is not :data:`DEFAULT`, by method and path template."""

_COMPILED: tuple[tuple[str, re.Pattern[str], BodyLimit], ...] = tuple(
    (method, compile_path(path)[0], limit) for (method, path), limit in ROUTE_LIMITS.items()
)


def limit_for(method: str, path: str) -> BodyLimit:
    """The body limit of a request (``path`` as requested, not a template)."""
    for want, pattern, limit in _COMPILED:
        if want == method and pattern.match(path):
            return limit
    return DEFAULT


def _declared_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:  # the HTTP parser refuses these; nothing to add here
        return None


class BodyLimits:
    """Refuses bodies over their route's limit before the application reads
    them (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = limit_for(str(scope.get("method", "")), str(scope.get("path", "")))
        declared = _declared_length(scope)
        if declared is not None and declared > limit.bytes:
            await _refuse(scope, send, limit)
            return

        received = 0
        started = False
        refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.bytes:
                    if not started and not refused:
                        refused = True
                        await _refuse(scope, send, limit)
                    # Unwinds the application wherever it reads the body.
                    raise HTTPException(status_code=413, detail="Payload too large")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the client has its 413 already
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except HTTPException:
            if not refused:
                raise


async def _refuse(scope: Scope, send: Send, limit: BodyLimit) -> None:
    error = PayloadTooLargeError(f"a request body here is limited to {limit.bytes} bytes")
    observe.refusal(error.code)
    response = problems.problem(
        status=error.status,
        title=error.title,
        detail=error.detail,
        code=error.code,
        instance=str(scope.get("path", "")),
        limit=limit.name,
    )
    # The unread body makes the connection unusable for another request.
    response.headers["Connection"] = "close"

    async def no_body() -> Message:  # the response never reads the request
        return {"type": "http.disconnect"}

    await response(scope, no_body, send)


def install(app: FastAPI) -> None:
    """Put :class:`BodyLimits` in front of ``app`` (once; call before it starts)."""
    if getattr(app.state, "body_limits", False):
        return
    app.state.body_limits = True
    app.add_middleware(BodyLimits)
