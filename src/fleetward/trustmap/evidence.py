"""Gathering conformance evidence from the audit log and the installation.

:func:`gather` returns the :class:`~fleetward.trustmap.conformance.Evidence`
the pure :func:`~fleetward.trustmap.conformance.evaluate` decides on. It
reads only, through the other domains' faces.

**From the audit log (reproducible).** The tenant's entries are streamed
once, oldest first, up to ``as_of`` (``fleetward.audit.entries_upto``) and
counted by action (:data:`_COUNTED`): certificates issued, renewed and
revoked (with key origin), enrollments refused, releases, campaigns,
vulnerability imports, triage, CRA cases, policy changes, quarantines,
automatic responses, alerts, incidents, factories and batches. A few lines
hold the newest value the log records instead of a count (the tenant's
``allow_unattested_keys_in_production``, the TUF root and release
thresholds). Each line keeps the sequence numbers it came from. Refused
attempts count their ``count`` (a window of refusals is one entry,
``fleetward.runtime.refusals``). The installation's refused anonymous
logins (system entries, no tenant) and the signed checkpoints are counted
up to the same point.

**The anchor.** The report's ``as_of`` is the tenant's newest entry at or
before the requested sequence number (default: the log's head), and every
audit line stops there, so asking again later with ``--as-of`` that number
gives the same lines, whatever was appended since.

**With a product.** Release and campaign lines follow the product through
the log (a release's ``ota.release.create`` names its product, a campaign's
``ota.campaign.create`` its release). Device lines (certificates, states,
commands) keep the devices whose registry entry names the product: that
lookup is the registry's current answer, a device's product being set when
it is registered. Tenant-wide lines say so (``scope``).

**Configuration (not in the log).** Listener trust, CA key custody, the TUF
root's storage, detectors and responses, live policy roles, measured boot
stages and the operator plane's TLS are read at gather time: they are the
only lines the log cannot reproduce, and the report says so.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from fleetward import audit, identity, tenancy
from fleetward.config import Settings
from fleetward.errors import AuditChainError, InvalidInputError, PayloadTooLargeError
from fleetward.trustmap._facts import config_lines, label, platform_lines
from fleetward.trustmap.conformance import MAX_BREAKDOWN, MAX_SEQS, Evidence, EvidenceLine, Value

__all__ = ["MAX_RESOLVED_DEVICES", "gather"]

# A --product report looks up the product of every device the tenant's log
# names; past this many distinct devices it is refused (memory), not truncated.
MAX_RESOLVED_DEVICES = 1_000_000
MAX_DETAILS = 65_536  # details longer than this are not parsed (the entry still counts)
_DEVICE_ACTIONS = frozenset(
    {"certificate.issue", "certificate.renew", "certificate.revoke", "device.state",
     "device.command"}
)  # fmt: skip
_AUTH_ACTIONS = frozenset({"auth.token", "auth.limited"})

# key -> (what it counts, whether a product narrows it)
_LINES: dict[str, tuple[str, bool]] = {
    "audit.entries": ("the tenant's audit entries", False),
    "certificates.issued": ("device certificates issued (environment / key origin / key)", True),
    "certificates.production-software-keys": (
        "production certificates issued or renewed for keys not hardware-attested", True),
    "certificates.renewed": ("device certificates renewed (key origin)", True),
    "certificates.revoked": ("device certificates revoked (reason)", True),
    # A refused enrollment often names a device the registry never held: tenant-wide.
    "enrollments.refused": ("enrollment attempts refused", False),
    "devices.quarantined": ("devices quarantined", True),
    "devices.revoked": ("devices revoked", True),
    "device.commands": ("commands sent to devices (command)", True),
    "tokens.created": ("operator tokens created (role)", False),
    "tokens.revoked": ("operator tokens revoked", False),
    "requests.refused": ("refused operator requests and inputs (action)", False),
    "cas.created": ("certificate authorities created (kind / key custody)", False),
    "cas.distrusted": ("certificate authorities distrusted", False),
    "tenant.allow-unattested-production": (
        "newest allow_unattested_keys_in_production (false until set)", False),
    "ota.tuf-root-threshold": ("newest TUF root threshold (keys)", False),
    "ota.release-threshold": ("lowest release-signing threshold of the products", True),
    "releases.created": ("releases uploaded", True),
    "releases.deployable": ("releases signed and deployable after the gate", True),
    "releases.withdrawn": ("releases withdrawn", True),
    "campaigns.created": ("update campaigns created (first wave)", True),
    "campaigns.large-first-wave": ("campaigns whose first wave is over 10 %", True),
    "campaigns.halted": ("campaigns halted by their gate or an operator", True),
    "campaigns.completed": ("campaigns completed", True),
    "campaigns.aborted": ("campaigns aborted with fallback", True),
    "reviews.passed": ("controls reviews of releases that passed", True),
    "reviews.waived": ("controls reviews waived by security (failed items)", True),
    "trustmap.registered": ("trust map versions registered (product)", False),
    "vulns.imports": ("vulnerability feed imports (kind)", False),
    "vulns.triaged": ("findings triaged (analysis)", True),
    "vulns.cases.opened": ("CRA cases opened (trigger)", False),
    "vulns.cases.reported": ("CRA reports submitted (kind)", False),
    "vulns.cases.fixed": ("CRA cases with a fix available", False),
    "comms.policy-versions": ("broker policy versions set", False),
    "detection.responses-set": ("automatic responses configured (kind: action)", False),
    "detection.automatic-responses": ("automatic responses run (action)", False),
    "alerts.handled": ("alerts acknowledged or resolved (state)", False),
    "incidents.opened": ("incidents opened", False),
    "incidents.closed": ("incidents closed", False),
    "factories.created": ("factories created", False),
    "batches.created": ("provisioning batches created", False),
    "batches.closed": ("provisioning batches closed", False),
    "attestation-roots.registered": ("key attestation roots registered", False),
}  # fmt: skip


def _details(raw: str) -> dict[str, Any]:
    if len(raw) > MAX_DETAILS:
        return {}
    try:
        d = json.loads(raw)
    except ValueError:
        return {}
    return d if isinstance(d, dict) else {}


def _id(subject: str, kind: str) -> str | None:
    prefix, _, rest = subject.partition(":")
    return rest if prefix == kind and rest else None


@dataclass
class _Acc:
    value: int = 0
    entries: int = 0
    first: int | None = None
    last: int | None = None
    seqs: list[int] = field(default_factory=list)
    breakdown: Counter[str] = field(default_factory=Counter)
    latest: Value = None

    def cite(self, seq: int) -> None:
        if self.last != seq:
            self.entries += 1
            self.first = seq if self.first is None else self.first
            self.last = seq
            if len(self.seqs) < MAX_SEQS:
                self.seqs.append(seq)

    def add(self, seq: int, n: int = 1, row: object = None) -> None:
        self.cite(seq)
        self.value += n
        if row is not None:
            self.breakdown[label(row)] += n


def _rows(c: Counter[str]) -> tuple[tuple[str, int], ...]:
    ordered = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))
    rows = ordered[:MAX_BREAKDOWN]
    if rest := sum(n for _, n in ordered[MAX_BREAKDOWN:]):
        rows.append(("other", rest))
    return tuple(rows)


class _Tally:
    """Counts the tenant's entries into lines, following the product if one is given."""

    def __init__(self, product: str | None, device_products: dict[str, str] | None) -> None:
        self.product = product
        self.device_products = device_products
        self.acc = {k: _Acc() for k in _LINES}
        self.releases: set[int] = set()
        self.campaigns: set[int] = set()
        self.thresholds: dict[str, tuple[int, int]] = {}  # product -> (threshold, seq)
        self.anchor: tuple[int, str] | None = None
        self._handlers: dict[str, Callable[[int, str, dict[str, Any], str], None]] = {
            "certificate.issue": self._issue, "certificate.renew": self._renew,
            "certificate.revoke": self._revoke, "device.state": self._state,
            "device.command": self._command, "token.create": self._token,
            "token.revoke": self._count("tokens.revoked"), "ca.create": self._ca,
            "ca.distrust": self._count("cas.distrusted"), "tenant.policy": self._policy,
            "ota.repository.create": self._root, "ota.root.rotate": self._root,
            "ota.product.create": self._product, "ota.release.create": self._release,
            "ota.release.approve": self._approve, "ota.release.withdraw": self._withdraw,
            "ota.campaign.create": self._campaign,
            "ota.campaign.halt": self._campaign_event("campaigns.halted"),
            "ota.campaign.complete": self._campaign_event("campaigns.completed"),
            "ota.campaign.abort": self._campaign_event("campaigns.aborted"),
            "ota.review": self._review, "ota.review.waive": self._review,
            "trustmap.register": self._map,
            "vulns.import": self._by("vulns.imports", "kind"), "vulns.triage": self._triage,
            "vulns.case.open": self._by("vulns.cases.opened", "trigger"),
            "vulns.case.submit": self._by("vulns.cases.reported", "kind"),
            "vulns.case.fix": self._count("vulns.cases.fixed"),
            "comms.policy.set": self._count("comms.policy-versions"),
            "detection.response.set": self._response_set,
            "detection.response": self._by("detection.automatic-responses", "action"),
            "incident.open": self._count("incidents.opened"),
            "incident.close": self._count("incidents.closed"),
            "factory.create": self._count("factories.created"),
            "batch.create": self._count("batches.created"),
            "batch.close": self._count("batches.closed"),
            "attestation-root.register": self._count("attestation-roots.registered"),
        }  # fmt: skip

    # -- scoping -------------------------------------------------------------
    def _device_in(self, subject: str) -> bool:
        if self.device_products is None:
            return True
        device = _id(subject, "device")
        return device is not None and self.device_products.get(device) == self.product

    def _release_in(self, release: object) -> bool:
        return self.product is None or release in self.releases

    # -- handlers: (seq, subject, details, action) ---------------------------
    def _count(self, key: str) -> Callable[[int, str, dict[str, Any], str], None]:
        return lambda seq, _s, _d, _a: self.acc[key].add(seq)

    def _by(self, key: str, field_: str) -> Callable[[int, str, dict[str, Any], str], None]:
        return lambda seq, _s, d, _a: self.acc[key].add(seq, row=d.get(field_, "?"))

    def _issue(self, seq: int, subject: str, d: dict[str, Any], _a: str) -> None:
        if self._device_in(subject):
            env, origin = d.get("environment", "?"), d.get("key_origin", "unknown")
            self.acc["certificates.issued"].add(seq, row=f"{env} / {origin} / {d.get('key', '?')}")
            self._production_key(seq, env, origin)

    def _production_key(self, seq: int, env: object, origin: object) -> None:
        if env == "production" and origin != "hardware-attested":
            self.acc["certificates.production-software-keys"].add(seq, row=origin)

    def _renew(self, seq: int, subject: str, d: dict[str, Any], _a: str) -> None:
        if self._device_in(subject):
            origin = d.get("key_origin", "unknown")
            self.acc["certificates.renewed"].add(seq, row=origin)
            self._production_key(seq, d.get("environment"), origin)

    def _revoke(self, seq: int, subject: str, d: dict[str, Any], _a: str) -> None:
        if self._device_in(subject):
            self.acc["certificates.revoked"].add(seq, row=d.get("reason", "?"))

    def _state(self, seq: int, subject: str, d: dict[str, Any], _a: str) -> None:
        key = {"quarantined": "devices.quarantined", "revoked": "devices.revoked"}.get(
            str(d.get("to"))
        )
        if key is not None and self._device_in(subject):
            self.acc[key].add(seq)

    def _command(self, seq: int, subject: str, d: dict[str, Any], _a: str) -> None:
        if self._device_in(subject):
            self.acc["device.commands"].add(seq, row=d.get("command", "?"))

    def _token(self, seq: int, _s: str, d: dict[str, Any], _a: str) -> None:
        self.acc["tokens.created"].add(seq, row=d.get("role", "?"))

    def _ca(self, seq: int, _s: str, d: dict[str, Any], _a: str) -> None:
        custody = str(d.get("key", "")).split(":", 1)[0] or "?"
        self.acc["cas.created"].add(seq, row=f"{d.get('kind', '?')} / {custody}")

    def _policy(self, seq: int, _s: str, d: dict[str, Any], _a: str) -> None:
        value = d.get("allow_unattested_keys_in_production")
        if isinstance(value, bool):
            acc = self.acc["tenant.allow-unattested-production"]
            acc.cite(seq)
            acc.latest = value

    def _root(self, seq: int, _s: str, d: dict[str, Any], _a: str) -> None:
        threshold = d.get("root_threshold", d.get("threshold"))
        keys = d.get("root_keys", d.get("keys"))
        if isinstance(threshold, int):
            acc = self.acc["ota.tuf-root-threshold"]
            acc.cite(seq)
            acc.latest = threshold
            acc.breakdown = Counter({f"{keys} keys": threshold})

    def _product(self, seq: int, subject: str, d: dict[str, Any], _a: str) -> None:
        name, threshold = _id(subject, "product"), d.get("threshold")
        wanted = name is not None and (self.product is None or name == self.product)
        if wanted and name is not None and isinstance(threshold, int):
            self.thresholds[name] = (threshold, seq)

    def _release(self, seq: int, subject: str, d: dict[str, Any], _a: str) -> None:
        rid = _id(subject, "release")
        if self.product is None or d.get("product") == self.product:
            if rid is not None and (rid.isascii() and rid.isdigit()):
                self.releases.add(int(rid))
            self.acc["releases.created"].add(seq, row=d.get("product", "?"))

    def _release_subject(self, subject: str) -> bool:
        rid = _id(subject, "release")
        return rid is not None and (rid.isascii() and rid.isdigit()) and self._release_in(int(rid))

    def _approve(self, seq: int, subject: str, d: dict[str, Any], _a: str) -> None:
        if d.get("state") == "deployable" and self._release_subject(subject):
            self.acc["releases.deployable"].add(seq)

    def _withdraw(self, seq: int, subject: str, _d: dict[str, Any], _a: str) -> None:
        if self._release_subject(subject):
            self.acc["releases.withdrawn"].add(seq)

    def _review(self, seq: int, subject: str, d: dict[str, Any], action: str) -> None:
        if not self._release_subject(subject):
            return
        if action == "ota.review.waive":
            self.acc["reviews.waived"].add(seq, row=", ".join(map(str, d.get("waived", []))))
        elif d.get("outcome") == "passed":
            self.acc["reviews.passed"].add(seq)

    def _map(self, seq: int, subject: str, _d: dict[str, Any], _a: str) -> None:
        product = subject.removeprefix("trustmap:")
        if self.product is None or product == self.product:
            self.acc["trustmap.registered"].add(seq, row=product)

    def _campaign(self, seq: int, subject: str, d: dict[str, Any], _a: str) -> None:
        cid = _id(subject, "campaign")
        if not self._release_in(d.get("release")):
            return
        if cid is not None and (cid.isascii() and cid.isdigit()):
            self.campaigns.add(int(cid))
        waves = d.get("waves")
        first = waves[0] if isinstance(waves, list) and waves else None
        if isinstance(first, int | float) and not isinstance(first, bool):
            plan, large = f"first wave {first:g} %", first > 10
        else:
            plan, large = "?", True  # a plan the log cannot tell is not counted as small
        self.acc["campaigns.created"].add(seq, row=plan)
        if large:
            self.acc["campaigns.large-first-wave"].add(seq)

    def _campaign_event(self, key: str) -> Callable[[int, str, dict[str, Any], str], None]:
        def handle(seq: int, subject: str, _d: dict[str, Any], _a: str) -> None:
            cid = _id(subject, "campaign")
            if self.product is None or (cid is not None and (cid.isascii() and cid.isdigit())
                                        and int(cid) in self.campaigns):  # fmt: skip
                self.acc[key].add(seq)

        return handle

    def _triage(self, seq: int, _s: str, d: dict[str, Any], _a: str) -> None:
        if self._release_in(d.get("release")):
            self.acc["vulns.triaged"].add(seq, row=d.get("analysis") or "?")

    def _response_set(self, seq: int, subject: str, d: dict[str, Any], _a: str) -> None:
        acc = self.acc["detection.responses-set"]
        acc.add(seq)
        kind = _id(subject, "alert-kind") or "?"
        # The newest answer per kind: drop the kind's older row.
        for old in [x for x in acc.breakdown if x.startswith(f"{label(kind)}: ")]:
            del acc.breakdown[old]
        acc.breakdown[label(f"{kind}: {d.get('action', '?')}")] = 1

    # -- one entry -----------------------------------------------------------
    def add(self, e: audit.AuditEntry) -> None:
        self.anchor = (e.seq, e.hash)
        self.acc["audit.entries"].add(e.seq)
        if e.outcome != "ok":
            d = _details(e.details)
            n = d.get("count", 1)
            n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
            self.acc["requests.refused"].add(e.seq, n, row=e.action)
            if e.action == "certificate.issue":
                self.acc["enrollments.refused"].add(e.seq, n)
            return
        if e.action.startswith("alert."):
            self.acc["alerts.handled"].add(e.seq, row=e.action.removeprefix("alert."))
            return
        handler = self._handlers.get(e.action)
        if handler is not None:
            handler(e.seq, e.subject, _details(e.details), e.action)

    def lines(self, scoped: bool) -> list[EvidenceLine]:
        if self.thresholds:
            acc = self.acc["ota.release-threshold"]
            for _, seq in sorted(self.thresholds.values(), key=lambda t: t[1]):
                acc.cite(seq)
            acc.latest = min(t for t, _ in self.thresholds.values())
            acc.breakdown = Counter({p: t for p, (t, _) in self.thresholds.items()})
        latest = {"tenant.allow-unattested-production", "ota.tuf-root-threshold",
                  "ota.release-threshold"}  # fmt: skip
        out = []
        for key, (text, narrowed) in _LINES.items():
            a = self.acc[key]
            value: Value = a.value
            if key in latest:
                # The tenant's option is false until set; a threshold never set is unknown.
                unset: Value = False if key == "tenant.allow-unattested-production" else None
                value = a.latest if a.latest is not None else unset
            out.append(EvidenceLine(
                key=key, text=text, source="audit",
                scope="product" if narrowed and scoped else "tenant", value=value,
                entries=a.entries, first_seq=a.first, last_seq=a.last, seqs=tuple(a.seqs),
                breakdown=_rows(a.breakdown),
            ))  # fmt: skip
        return out


def _device_products(session: Session, *, tenant_id: int, upto: int) -> dict[str, str]:
    """``device id -> product`` of every device the tenant's log names, from the registry."""
    names: set[str] = set()
    entries = audit.entries_upto(session, tenant_id=tenant_id, upto=upto, actions=_DEVICE_ACTIONS)
    for e in entries:
        if (d := _id(e.subject, "device")) is not None:
            names.add(d)
            if len(names) > MAX_RESOLVED_DEVICES:
                raise PayloadTooLargeError(
                    f"the log names over {MAX_RESOLVED_DEVICES} devices: report the tenant "
                    "without --product, or an earlier --as-of"
                )
    pks = identity.device_pks(session, tenant_id=tenant_id, device_ids=names)
    rows = identity.devices_by_pk(session, pks.values())
    return {d.device_id: d.product for d in rows.values()}


def _system_lines(session: Session, *, upto: int) -> list[EvidenceLine]:
    refused = _Acc()
    for e in audit.entries_upto(session, tenant_id=None, upto=upto, actions=_AUTH_ACTIONS):
        n = _details(e.details).get("count", 1)
        n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
        refused.add(e.seq, n, row=e.action)
    checkpoints = audit.checkpoints_upto(session, upto=upto)
    sizes = [c.tree_size for c in checkpoints]
    return [
        EvidenceLine(
            key="auth.refused", text="operator logins refused or rate-limited (installation)",
            source="audit", scope="installation", value=refused.value, entries=refused.entries,
            first_seq=refused.first, last_seq=refused.last, seqs=tuple(refused.seqs),
            breakdown=_rows(refused.breakdown),
        ),
        EvidenceLine(
            key="audit.checkpoints",
            text="signed audit checkpoints covering entries up to as_of (tree sizes cited)",
            source="audit", scope="installation", value=len(sizes), entries=len(sizes),
            first_seq=sizes[0] if sizes else None, last_seq=sizes[-1] if sizes else None,
            seqs=tuple(sizes[:MAX_SEQS]),
        ),
    ]  # fmt: skip


def _chain(session: Session, *, tenant_id: int, anchor: int, public_key: Any) -> tuple[bool, str]:
    signatures = "checkpoint signatures checked" if public_key is not None else (
        "checkpoint signatures not checked (no key)")  # fmt: skip
    try:
        audit.verify_tenant(session, tenant_id=tenant_id, public_key=public_key)
    except AuditChainError as exc:
        # A break after the anchor leaves every entry the evidence cites proven.
        if exc.seq is None or exc.seq <= anchor:
            return False, f"the audit log does not verify: {exc.detail}"
    return True, f"every entry up to {anchor} chains from genesis; {signatures}"


def gather(
    session: Session,
    *,
    tenant_id: int,
    product: str | None,
    as_of: int | None,
    settings: Settings | None = None,
    checkpoint_key: Any = None,
) -> Evidence:
    """Gather the conformance evidence of a tenant (and product) as of an audit entry.

    Args:
        session: an open session (only read).
        tenant_id: whose evidence.
        product: narrow release, campaign and device lines to one product.
        as_of: the last audit sequence number counted; ``None``: the log's
            head now. The report's anchor is the tenant's newest entry at or
            before it.
        settings: the installation's settings, for the operator plane's TLS
            and login limits (``None``: those lines are unknown).
        checkpoint_key: the audit checkpoint public key, to check checkpoint
            signatures while the chain is verified (``None``: not checked).

    Returns:
        The evidence; :func:`fleetward.trustmap.conformance.evaluate` decides on it.

    Raises:
        NotFoundError: no such tenant.
        InvalidInputError: ``as_of`` below 1 or past the newest audit entry.
        PayloadTooLargeError: too many devices to follow a product.
    """
    tenant = tenancy.get_tenant(session, tenant_id)
    head = audit.head_seq(session)
    if as_of is not None and as_of < 1:
        raise InvalidInputError(f"as_of must be an audit sequence number >= 1, not {as_of}")
    if as_of is not None and as_of > head:
        raise InvalidInputError(f"as_of {as_of} is past the newest audit entry")
    upto = head if as_of is None else as_of
    devices = (
        _device_products(session, tenant_id=tenant_id, upto=upto) if product is not None else None
    )
    tally = _Tally(product, devices)
    for e in audit.entries_upto(session, tenant_id=tenant_id, upto=upto):
        tally.add(e)
    anchor, anchor_hash = tally.anchor or (0, None)
    verified, detail = _chain(
        session, tenant_id=tenant_id, anchor=anchor, public_key=checkpoint_key
    )
    chain_line = EvidenceLine(
        key="audit.chain-verified", text="the audit chain verifies up to as_of",
        source="audit", scope="installation", value=verified,
    )  # fmt: skip
    lines = [
        *tally.lines(product is not None),
        *_system_lines(session, upto=anchor),
        chain_line,
        *config_lines(session, tenant_id=tenant_id, product=product, settings=settings),
        *platform_lines(),
    ]
    return Evidence(
        tenant=tenant.name,
        product=product,
        as_of=anchor,
        as_of_hash=anchor_hash,
        tenant_entries=tally.acc["audit.entries"].value,
        chain_verified=verified,
        chain_detail=detail,
        lines=tuple(sorted(lines, key=lambda x: x.key)),
    )
