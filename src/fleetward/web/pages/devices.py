"""Console pages: the device list and one device's page.

- **The list** (``/console/devices``): the tenant's devices by id, searched
  by an id substring (``q``) and filtered by ``state``, ``product`` and
  ``environment``, each checked against the values that exist (a bad one is
  a 400 page that does not repeat it); pages of :data:`PAGE` with a next-page
  link (``after``: the last id shown). Each row's certificate expiry,
  environment, firmware and last-seen time come from one set-based read per
  column for the page, never one query per device.
- **A device** (``/console/devices/{device_id}``): its facts, certificates
  and one timeline from the factory to now, newest first, at most
  :data:`TIMELINE` entries, merged from every domain that records something
  about it (:func:`timeline`). Enrollment attempts and audit entries are
  shown only to a role that may read the enrollment records and the log
  (as the API's routes for them require); the page says when they are left
  out. Another tenant's device, like an unknown id, is a 404 page.
- **Actions** (quarantine, release, revoke) are forms the script sends to the
  REST API, offered only when the role and scope allow them on this device's
  environments (:func:`fleetward.tenancy.scope.decide`, as the API decides),
  each behind a confirmation that states its effect at the broker.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from fleetward import audit, comms, detection, identity, ota, provisioning, telemetry
from fleetward.errors import InvalidInputError, NotFoundError
from fleetward.identity.profile import DEVICE_ID
from fleetward.tenancy import ENVIRONMENTS, scope
from fleetward.web._page import show
from fleetward.web._viewer import ViewerDep

__all__ = ["PAGE", "TIMELINE", "Entry", "router", "timeline"]

router = APIRouter(include_in_schema=False)

PAGE = 50  # devices per list page
TIMELINE = 200  # timeline entries per device page (and read per source)
MAX_CERTIFICATES = 50  # newest certificates listed on a device page
MAX_DETAIL = 300  # characters of a device-reported value shown in the timeline
# A search term: what a device id is made of (a substring may start anywhere).
_QUERY = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Event types of a device's own timeline (metrics and the like are left out).
_EVENT_PREFIXES = ("attestation.", "ota.", "authz.")
# Audit entries another source already tells: a certificate issued, renewed
# or revoked is a certificate row (shown to every reader), and every
# enrollment attempt, refused ones included, is an enrollment record (shown
# to the same roles as the log).
_TOLD_ELSEWHERE = {
    "certificate.issue": ("ok", "refused"),
    "certificate.renew": ("ok",),
    "certificate.revoke": ("ok",),
}
_STATE_TONE = {"active": "ok", "pending": "", "quarantined": "warn", "revoked": "bad"}
QUARANTINE_EFFECT = (
    "Quarantine {d}: at once the broker limits it to the quarantine role (it may only "
    "send boot evidence and telemetry and receive updates; every other topic is refused). "
    "Its certificates stay valid; release it to restore its roles."
)
RELEASE_EFFECT = (
    "Release {d} from quarantine: it becomes active and the broker gives it its roles "
    "under the communication policy again at once."
)
REVOKE_EFFECT = (
    "Revoke {d}: every certificate it holds is revoked (published in the next CRL and "
    "answered by OCSP), the broker cuts off its live connections within seconds and "
    "refuses it at the handshake. This cannot be undone: the device must be "
    "re-provisioned to connect again."
)


@dataclass(frozen=True)
class Entry:
    """One line of a device's timeline."""

    at: dt.datetime
    kind: str  # enrollment | certificate | boot | update | broker | alert | lifecycle | ...
    title: str
    detail: str = ""
    tone: str = ""  # ok | warn | bad | "" (a CSS class of the badge)


@dataclass(frozen=True)
class _Filters:
    q: str
    state: str
    product: str
    environment: str
    after: str

    def query(self, **extra: str) -> str:
        """The list's query string with these filters (empty ones left out)."""
        values = {
            "q": self.q,
            "state": self.state,
            "product": self.product,
            "environment": self.environment,
            **extra,
        }
        return urlencode({k: v for k, v in values.items() if v})


def _filters(
    *, q: str, state: str, product: str, environment: str, after: str, products: Sequence[str]
) -> _Filters:
    """The list's filters, each checked against the values that exist.

    Raises:
        InvalidInputError: a value that is not one of them (not repeated in
            the message: it may be anything).
    """
    if q and not _QUERY.fullmatch(q):
        raise InvalidInputError(
            "search: a part of a device id, up to 64 letters, digits, '.', '_' or '-'"
        )
    if state and state not in identity.DEVICE_STATES:
        raise InvalidInputError(f"state: one of {', '.join(identity.DEVICE_STATES)}")
    if product and product not in products:
        raise InvalidInputError("product: not a product of this tenant's devices")
    if environment and environment not in ENVIRONMENTS:
        raise InvalidInputError(f"environment: one of {', '.join(ENVIRONMENTS)}")
    if after and not DEVICE_ID.fullmatch(after):
        raise InvalidInputError("after: a device id")
    return _Filters(q=q, state=state, product=product, environment=environment, after=after)


@router.get("/console/devices")
def devices(
    request: Request,
    who: ViewerDep,
    q: str = "",
    state: str = "",
    product: str = "",
    environment: str = "",
    after: str = "",
) -> HTMLResponse:
    """The tenant's devices, searched and filtered, one page at a time."""
    p = who.principal

    def load(session: Session) -> dict[str, Any]:
        scope.authorize(p, scope.DEVICE_READ)
        products = identity.device_products(session, p)
        f = _filters(
            q=q, state=state, product=product, environment=environment, after=after,
            products=products,
        )  # fmt: skip
        rows = identity.search_devices(
            session, p, q=f.q, state=f.state or None, product=f.product or None,
            environment=f.environment or None, after=f.after, limit=PAGE + 1,
        )  # fmt: skip
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        pks = [d.id for d in rows]
        envs = identity.latest_environments(session, pks)
        expiry = identity.certificate_expiry_of(session, pks)
        firmware = ota.firmware_of(session, pks)
        seen = telemetry.last_seen_of(session, pks)
        items = [
            {
                "device_id": d.device_id,
                "href": _device_href(d.device_id),
                "product": d.product,
                "state": d.state,
                "tone": _STATE_TONE.get(d.state, ""),
                "environment": envs.get(d.id),
                "key_origin": d.key_origin,
                "firmware": firmware[d.id][0] if d.id in firmware else None,
                "expires": expiry.get(d.id),
                "last_seen": seen.get(d.id),
            }
            for d in rows
        ]
        next_url = (
            "/console/devices?" + f.query(after=rows[-1].device_id) if more and rows else None
        )
        return {
            "devices": items,
            "filters": f,
            "states": identity.DEVICE_STATES,
            "products": products,
            "environments": ENVIRONMENTS,
            "next_url": next_url,
            "page_size": PAGE,
        }

    return show(request, who, "devices.html", load)


def _device_href(device_id: str) -> str:
    return "/console/devices/" + quote(device_id, safe="")


@router.get("/console/devices/{device_id}")
def device(request: Request, who: ViewerDep, device_id: str) -> HTMLResponse:
    """One device: facts, certificates, its timeline and the actions allowed on it."""
    p = who.principal

    def load(session: Session) -> dict[str, Any]:
        scope.authorize(p, scope.DEVICE_READ)
        if not DEVICE_ID.fullmatch(device_id):  # no such id can exist; not repeated back
            raise NotFoundError("device not found")
        d = identity.get_device(session, p, device_id)  # another tenant's: not found
        subject = f"device:{d.device_id}"
        certs = identity.list_certificates(session, p, d.device_id)
        environments = sorted(identity.device_environments(session, [d.id]))
        factories = (
            {f.id: f.name for f in provisioning.list_factories(session, p)}
            if d.factory_id is not None
            else {}
        )
        firmware = ota.firmware_of(session, [d.id]).get(d.id)
        attempts = (
            provisioning.device_attempts(session, p, d.device_id, limit=TIMELINE)
            if who.can(scope.ENROLLMENT_RECORDS_READ)
            else None
        )
        entries = (
            audit.entries_about(session, tenant_id=p.tenant_id, subject=subject, limit=TIMELINE)
            if who.can(scope.AUDIT_READ)
            else None
        )
        events = [
            e
            for prefix in _EVENT_PREFIXES
            for e, _ in telemetry.query(
                session, p, device_id=d.device_id, type_prefix=prefix, limit=TIMELINE
            )
        ]
        alerts = detection.alerts_about(session, p, subject, limit=TIMELINE)
        lines = timeline(
            certificates=certs, attempts=attempts or (), audit_entries=entries or (),
            events=events, alerts=alerts, factories=factories,
        )  # fmt: skip
        target = scope.Target.of(environments)

        def allowed(action: scope.Action) -> bool:
            return scope.decide(p, action, target).allowed

        return {
            "device": d,
            "tone": _STATE_TONE.get(d.state, ""),
            "labels": _labels(d.labels),
            "environments": environments,
            "factory": factories.get(d.factory_id) if d.factory_id is not None else None,
            "certificates": list(reversed(certs))[:MAX_CERTIFICATES],
            "more_certificates": max(0, len(certs) - MAX_CERTIFICATES),
            "firmware": firmware,
            "last_seen": telemetry.last_seen_of(session, [d.id]).get(d.id),
            "denials": sorted(comms.denial_counts(session, p, d.device_id).items()),
            "timeline": lines,
            "timeline_max": TIMELINE,
            "left_out": [
                name
                for name, shown in (("enrollment attempts", attempts), ("audit entries", entries))
                if shown is None
            ],
            "api_path": "/api/v1/devices/" + quote(d.device_id, safe=""),
            "can_quarantine": d.state == "active" and allowed(scope.DEVICE_STATE),
            "can_release": d.state == "quarantined" and allowed(scope.DEVICE_STATE),
            "can_revoke": d.state in ("pending", "active", "quarantined")
            and allowed(scope.DEVICE_REVOKE),
            "quarantine_effect": QUARANTINE_EFFECT.format(d=d.device_id),
            "release_effect": RELEASE_EFFECT.format(d=d.device_id),
            "revoke_effect": REVOKE_EFFECT.format(d=d.device_id),
            "reasons": identity.REVOCATION_REASONS,
        }

    return show(request, who, "device.html", load)


def _labels(text: str) -> list[tuple[str, str]]:
    try:
        labels = json.loads(text or "{}")
    except ValueError:
        return []
    return sorted((str(k), str(v)) for k, v in labels.items()) if isinstance(labels, dict) else []


def _fields(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


def timeline(
    *,
    certificates: Iterable[Any],
    attempts: Iterable[Any],
    audit_entries: Iterable[Any],
    events: Iterable[Any],
    alerts: Iterable[Any],
    factories: dict[int, str],
    limit: int = TIMELINE,
) -> list[Entry]:
    """One device's history from every source, newest first, at most ``limit``.

    Pure: rows in (certificate records, enrollment attempts, audit entries,
    telemetry events, alerts), entries out. A certificate gives two entries
    (issued, revoked); the audit entries the certificates already tell are
    left out, so each thing happens once on the timeline.
    """
    out: list[Entry] = []
    for c in certificates:
        out.append(
            Entry(
                c.not_before, "certificate", f"certificate {c.serial} issued",
                f"{c.environment} · key {c.key_origin or 'unknown'} "
                f"· valid until {c.not_after:%Y-%m-%d}",
                "ok",
            )
        )  # fmt: skip
        if c.revoked_at is not None:
            out.append(
                Entry(
                    c.revoked_at, "certificate", f"certificate {c.serial} revoked",
                    f"reason {c.revocation_reason or 'unspecified'}", "bad",
                )
            )  # fmt: skip
    for a in attempts:
        where = factories.get(a.factory_id, f"factory {a.factory_id}") if a.factory_id else ""
        parts = [
            where,
            f"batch {a.batch_id}" if a.batch_id else "",
            f"via {a.route}" if a.route else "",
            a.environment or "",
            f"key {a.key_origin}" if a.key_origin else "",
            f"by {a.token_id}",
        ]
        detail = " · ".join(x for x in parts if x)
        if a.result != "accepted":
            detail += f" · {a.category or 'refused'}: {_short(a.reason or '')}"
        out.append(
            Entry(
                a.ts, "enrollment", f"enrollment {a.result}", detail,
                "ok" if a.result == "accepted" else "bad",
            )
        )  # fmt: skip
    for e in audit_entries:
        if e.outcome in _TOLD_ELSEWHERE.get(e.action, ()):
            continue
        out.append(_audit_entry(e))
    for ev in events:
        out.append(_event_entry(ev))
    for al in alerts:
        out.append(
            Entry(
                al.first_seen, "alert", f"alert {al.kind} ({al.severity}, {al.state})",
                _short(al.summary) + (f" · response: {_short(al.response)}" if al.response else ""),
                "bad" if al.severity in ("high", "critical") else "warn",
            )
        )  # fmt: skip
    out.sort(key=lambda x: x.at, reverse=True)
    return out[:limit]


def _audit_entry(e: Any) -> Entry:
    details = _fields(e.details)
    if e.action == "device.state" and e.outcome == "ok":
        to = str(details.get("to", ""))
        title = {
            "quarantined": "quarantined",
            "active": "released from quarantine"
            if details.get("from") == "quarantined"
            else "active",
            "revoked": "revoked",
            "retired": "retired",
        }.get(to, f"state {to}")
        reason = details.get("reason")
        detail = f"by {e.actor}" + (f" · reason {_short(reason)}" if reason else "")
        return Entry(e.ts, "lifecycle", title, detail, _STATE_TONE.get(to, "") or "warn")
    shown = {k: v for k, v in details.items() if k not in ("serial",)}
    detail = f"by {e.actor}" + (f" · {_short(shown)}" if shown else "")
    tone = "bad" if e.outcome != "ok" else ""
    return Entry(e.ts, "audit", f"{e.action} ({e.outcome})", detail, tone)


def _event_entry(ev: Any) -> Entry:
    f = _fields(ev.fields)
    times = f" x{ev.count}" if ev.count and ev.count > 1 else ""
    if ev.type == "attestation.verdict":
        verdict = str(f.get("verdict", "?"))
        failed = f.get("failed") or []
        detail = f"boot {f.get('bootcount', '?')}" + (
            f" · failed: {_short(failed)}" if failed else ""
        )
        version = f.get("swversion") or f.get("version")
        if version:
            detail += f" · firmware {_short(version)}"
        tone = "ok" if verdict == "pass" else "bad"
        return Entry(ev.at, "boot", f"boot verdict {verdict}", detail, tone)
    if ev.type == "attestation.refused":
        return Entry(
            ev.at, "boot", f"boot evidence refused{times}", _short(f.get("reason", "")), "bad"
        )
    if ev.type.startswith("ota."):
        step = str(f.get("step", ev.type))
        parts = [
            f"campaign {_short(f['campaign'])}" if "campaign" in f else "",
            f"version {_short(f['version'])}" if "version" in f else "",
        ]
        tones = {"committed": "ok", "fell-back": "bad", "refused": "bad", "error": "bad"}
        return Entry(
            ev.at, "update", f"update {_short(step)}", " · ".join(x for x in parts if x),
            tones.get(step, ""),
        )  # fmt: skip
    if ev.type.startswith("authz."):
        what = ev.type.removeprefix("authz.")
        detail = " ".join(
            _short(f[k]) for k in ("action", "topic") if isinstance(f.get(k), str) and f[k]
        )
        return Entry(ev.at, "broker", f"broker {what}{times}", detail, "bad")
    return Entry(ev.at, "event", f"{ev.type}{times}", _short(f) if f else "")
