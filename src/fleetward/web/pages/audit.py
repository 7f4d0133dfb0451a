"""Console pages: the audit log, its verification, and an entry's inclusion proof.

- ``/console/audit``: the tenant's entries, newest first, filtered by
  action (a prefix), actor (exact) and subject (a substring), paged. With
  ``?verify=1`` the page also verifies the chain for the tenant
  (:func:`fleetward.audit.verify_tenant`, what ``GET
  /api/v1/audit/verification`` answers). That walks **the whole
  installation's log** (every tenant's entries are links in the chain) and
  recomputes every checkpoint, so it costs time in the size of the log: it
  runs only when the operator asks for it with the link, never on a plain
  visit or a live refresh (the page with ``verify=1`` does not refresh
  itself).
- ``/console/audit/{seq}``: one of the tenant's entries, its inclusion proof
  in the newest signed checkpoint that covers it
  (:func:`fleetward.audit.inclusion_proof`), and whether that proof
  verifies against the installation's checkpoint key
  (:func:`fleetward.audit.verify_proof`, as ``fleetward audit
  verify-proof`` does offline).

Key locations in entries and checkpoints (file paths, PKCS#11 URIs) are
shown only to roles that manage CAs, as the API redacts them. Another
tenant's entry, or a system entry, is a 404 page; a filter that does not
parse is a 400 page.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from fleetward import audit
from fleetward.errors import AuditChainError, InvalidInputError, NotFoundError
from fleetward.tenancy import Permission, scope
from fleetward.web._page import show
from fleetward.web._viewer import Viewer, ViewerDep, context

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

PAGE = 50  # entries per page
MAX_SEQ = 2**53 - 1  # sequence numbers above this are refused (the API's MAX_REQUEST_INT)
MAX_ACTOR = 200  # the column's width
MAX_SUBJECT = 200
MAX_ACTION = 64
ACTION = re.compile(r"[a-z0-9][a-z0-9._-]*")  # dotted verbs: incident.open, alert.
KEY_FIELDS = ("key", "key_uri", "key_id")  # key locations, for CA managers only


def _text(request: Request, name: str, limit: int) -> str | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    if len(value) > limit or not value.isprintable():
        raise InvalidInputError(f"{name} must be printable text of at most {limit} characters")
    return value


def _seq(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    if (
        not (value.isascii() and value.isdigit())
        or len(value) > 16
        or not 1 <= int(value) <= MAX_SEQ
    ):
        raise InvalidInputError(f"{name} must be a whole number from 1 to {MAX_SEQ}")
    return int(value)


def _filters(request: Request) -> dict[str, str | None]:
    action = _text(request, "action", MAX_ACTION)
    if action is not None and not ACTION.fullmatch(action):
        raise InvalidInputError(
            "action is a dotted verb or its start (lower-case letters, digits, '.', '_', '-'), "
            "e.g. incident. or alert.resolved"
        )
    return {
        "action": action,
        "actor": _text(request, "actor", MAX_ACTOR),
        "subject": _text(request, "subject", MAX_SUBJECT),
    }


def _details(raw: str, who: Viewer) -> str:
    """An entry's details as the viewer may read them, pretty-printed."""
    try:
        details = json.loads(raw or "{}")
    except ValueError:  # never written by fleetward
        return raw[:2000]
    if isinstance(details, dict) and not who.principal.can(Permission.CA_MANAGE):
        for name in KEY_FIELDS:
            if isinstance(details.get(name), str):
                details[name] = "(redacted)"
    return json.dumps(details, indent=2, sort_keys=True)


def _verification(session: Session, request: Request, tenant_id: int) -> dict[str, Any]:
    """The tenant's view of a full verification (ok or the break it names)."""
    try:
        report = audit.verify_tenant(
            session, tenant_id=tenant_id, public_key=context(request).checkpoint_public_key()
        )
    except AuditChainError as exc:
        return {"ok": False, "detail": exc.detail}
    return {"ok": True, "report": report}


@router.get("/console/audit")
def log(request: Request, who: ViewerDep) -> HTMLResponse:
    """The tenant's audit entries, newest first; the chain's verification on request."""

    def load(session: Session) -> dict[str, Any]:
        scope.authorize(who.principal, scope.AUDIT_READ)
        filters = _filters(request)
        before = _seq(request.query_params.get("before"), "before")
        verify = request.query_params.get("verify")
        if verify not in (None, "", "1"):
            raise InvalidInputError("verify is 1 (verify the chain) or absent")
        rows = audit.search_entries(
            session, tenant_id=who.principal.tenant_id, before=before, limit=PAGE + 1, **filters
        )
        next_url = ""
        if len(rows) > PAGE:
            query = {k: v for k, v in filters.items() if v is not None}
            query["before"] = str(rows[PAGE - 1].seq)
            next_url = f"{request.url.path}?{urlencode(query)}"
        verify_query = {k: v for k, v in filters.items() if v is not None}
        verify_query["verify"] = "1"
        checkpoint = audit.newest_checkpoint(session)
        return {
            "rows": [{"entry": e, "details": _details(e.details, who)} for e in rows[:PAGE]],
            "filters": {k: v or "" for k, v in filters.items()},
            "filtered": any(filters.values()),
            "next_url": next_url,
            "verify_url": f"{request.url.path}?{urlencode(verify_query)}",
            "verification": (
                _verification(session, request, who.principal.tenant_id) if verify else None
            ),
            "checkpoint": checkpoint,
            # A verification is not repeated by live refreshes.
            "live_updates": not verify,
        }

    return show(request, who, "audit.html", load)


@router.get("/console/audit/{seq}")
def entry(request: Request, seq: str, who: ViewerDep) -> HTMLResponse:
    """One entry and its inclusion proof in a signed checkpoint, verified."""

    def load(session: Session) -> dict[str, Any]:
        scope.authorize(who.principal, scope.AUDIT_READ)
        number = _seq(seq, "sequence number")
        if number is None:  # a path segment is never empty; kept for the type
            raise NotFoundError("audit entry not found")
        row = audit.get_entry(session, tenant_id=who.principal.tenant_id, seq=number)
        proof: dict[str, Any] | None = None
        uncovered = ""
        verdict: dict[str, Any] = {"ok": False, "detail": ""}
        try:
            proof = audit.inclusion_proof(session, seq=number, tenant_id=who.principal.tenant_id)
        except NotFoundError as exc:  # the entry is ours (read above): no checkpoint yet
            uncovered = exc.detail
        if proof is not None:
            key = context(request).checkpoint_public_key()
            if key is None:
                verdict = {"ok": False, "detail": "this installation has no checkpoint key"}
            else:
                try:
                    audit.verify_proof(proof, public_key=key)
                    verdict = {"ok": True, "detail": ""}
                except AuditChainError as exc:
                    verdict = {"ok": False, "detail": exc.detail}
            if not who.principal.can(Permission.CA_MANAGE):
                proof["checkpoint"]["key_id"] = "(redacted)"
        return {
            "entry": row,
            "details": _details(row.details, who),
            "proof": proof,
            "proof_json": json.dumps(proof, indent=2) if proof else "",
            "uncovered": uncovered,
            "verdict": verdict,
        }

    return show(request, who, "audit_entry.html", load)
