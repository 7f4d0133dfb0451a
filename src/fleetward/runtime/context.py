"""The application context: database, PKI and settings of one running fleetward.

Built once per process (``AppContext.from_settings``) and handed to the API,
the CLI and the runtime's workers. Domains never see it: they take the
explicit pieces they need (a ``Database``, a ``Pki``, a home directory).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from sqlalchemy.orm import Session

from fleetward import attestation, audit, identity, provisioning
from fleetward.config import Settings
from fleetward.errors import FleetwardError, NotFoundError
from fleetward.identity import KeyAttester, Pki, ServicePki
from fleetward.keys import Signer
from fleetward.keys.ring import KeyRing
from fleetward.provisioning import verify_renewal_attestation
from fleetward.runtime.refusals import Flush, RefusalKey, RefusalTally
from fleetward.store import Database, utcnow
from fleetward.tenancy.roles import Principal

__all__ = ["AppContext"]


@dataclass
class AppContext:
    """Database, PKI and settings of one running fleetward."""

    settings: Settings
    db: Database
    pki: Pki
    # Verifies key attestation statements sent with renewals. Identity may not
    # import provisioning (which owns the statement format and vendor roots),
    # so the two are joined here.
    key_attester: KeyAttester = field(default=verify_renewal_attestation)
    # Refusals recorded as counts, one record per key and window
    # (fleetward.runtime.refusals); made from the settings when not given.
    refusals: RefusalTally = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.refusals is None:
            self.refusals = RefusalTally(window=self.settings.refusal_audit_window)

    @property
    def service_pki(self) -> ServicePki:
        """fleetward's own CA: its server certificates and service identities."""
        return ServicePki(self.settings.home / "service-ca", self.settings.service_names)

    @classmethod
    def from_settings(cls, settings: Settings) -> AppContext:
        """Open the database and key ring described by ``settings``."""
        pkcs11 = settings.keyring_options()
        keyring = KeyRing(
            keys_dir=settings.keys_dir,
            passphrase=settings.key_passphrase(),
            pkcs11_token=pkcs11["pkcs11_token"],
            pkcs11_pin=pkcs11["pkcs11_pin"],
            pkcs11_module=pkcs11["pkcs11_module"],
        )
        db = Database(settings.database_url)
        crl_dir = settings.home / "crls" if db.is_sqlite else None
        return cls(
            settings=settings,
            db=db,
            pki=Pki(keyring=keyring, public_url=settings.public_url, crl_dir=crl_dir),
        )

    def enroll_devices(
        self,
        who: Principal,
        *,
        items: list[identity.BatchItem],
        environment: str | None,
        route: str,
        source: str | None = None,
    ) -> list[identity.BatchResult]:
        """Enrollment from any path (REST, EST, CLI): the provisioning
        domain's rules (factory tokens through their batches) and its record
        of every attempt."""
        return provisioning.enroll_devices(
            self.db,
            self.pki,
            who,
            items=items,
            environment=environment,
            route=route,
            source=source,
        )

    def enroll_one(
        self,
        who: Principal,
        item: identity.BatchItem,
        *,
        environment: str | None,
        route: str,
        source: str | None = None,
    ) -> identity.Issued:
        """One device's enrollment (REST single, EST, the CLI): a refusal of
        the whole request is recorded in the audit log and raised; a refusal
        of the item was recorded with its enrollment record and is raised.

        Raises:
            FleetwardError: whatever refused it.
        """
        with self.refusals_recorded(
            actor=who.actor,
            action="certificate.issue",
            subject=f"device:{item.device_id[:64]}",
            tenant_id=who.tenant_id,
        ):
            [result] = self.enroll_devices(
                who, items=[item], environment=environment, route=route, source=source
            )
        if result.error is not None:
            raise result.error
        if result.issued is None:
            raise RuntimeError("broken invariant: an enrollment result without a certificate")
        return result.issued

    def checkpoint_signer(self) -> Signer:
        """The key that signs audit checkpoints."""
        return self.pki.keyring.open(f"file:{self.settings.checkpoint_key_path}")

    def checkpoint_public_key(self) -> PublicKeyTypes | None:
        """Its public key (``None`` before ``init`` created it)."""
        path = self.settings.checkpoint_public_key_path
        return load_pem_public_key(path.read_bytes()) if path.exists() else None

    @contextmanager
    def unit_of_work(
        self, *, actor: str, action: str, subject: str, tenant_id: int | None
    ) -> Iterator[Session]:
        """A transaction that commits on success; on a fleetward error it
        rolls back, records the refusal in the audit log, and re-raises."""
        with (
            self.refusals_recorded(
                actor=actor, action=action, subject=subject, tenant_id=tenant_id
            ),
            self.db.session() as session,
        ):
            yield session

    def operator_work(
        self, who: Principal, *, action: str, subject: str
    ) -> AbstractContextManager[Session]:
        """:meth:`unit_of_work` acting as an authenticated operator."""
        return self.unit_of_work(
            actor=who.actor, action=action, subject=subject, tenant_id=who.tenant_id
        )

    @contextmanager
    def refusals_recorded(
        self, *, actor: str, action: str, subject: str, tenant_id: int | None
    ) -> Iterator[None]:
        """Record a fleetward error raised inside as a refused attempt, and
        re-raise: the first of its window at once, the rest as a count
        (:meth:`record_refusal`), per actor, action, subject and error code."""
        try:
            yield
        except FleetwardError as exc:
            # An id that names nothing is caller text: probing many ids must
            # not make one audit row each, so they share the subject's kind
            # ("vuln-finding:*"); the first refusal's reason names the id.
            if isinstance(exc, NotFoundError) and ":" in subject:
                subject = subject.split(":", 1)[0] + ":*"
            self.record_refusal(
                RefusalKey(
                    kind="audit",
                    action=action,
                    actor=actor,
                    subject=subject,
                    reason=exc.code,
                    tenant_id=tenant_id,
                ),
                reason=exc.detail,
            )
            raise

    def record_refusal(
        self,
        key: RefusalKey,
        *,
        reason: str,
        details: dict[str, Any] | None = None,
        window_details: dict[str, Any] | None = None,
        count_only: bool = False,
        now: dt.datetime | None = None,
    ) -> None:
        """Record one refusal as :mod:`fleetward.runtime.refusals` says: at
        once if it opens a window of its key (an audit entry with
        ``outcome="refused"``, or an ``attestation.refused`` event), else as
        a count; and write the counts of windows that ended, in the same
        transaction. Nothing is written for a refusal that is only counted.

        Args:
            key: What was refused (its ``reason`` is the closed-set part).
            reason: This refusal's own reason (the error detail).
            details: Facts about this refusal (in a record written now).
            window_details: Facts about every refusal of the key (e.g. the
                source address), in both records of its window.
            count_only: Never write this one on its own (e.g. a 429).
            now: When (defaults to the clock).
        """
        now = now or utcnow()
        common = dict(window_details or {})
        facts = {**common, **(details or {})}
        first = self.refusals.note(key, now=now, count_only=count_only, details=common)
        flushes = self.refusals.due(now)
        if not first and not flushes:
            return
        with self.db.session() as session:
            self._write_flushes(session, flushes, now=now)  # the older windows first
            if first:
                self._write_refusal(session, key, reason=reason, count=1, details=facts, now=now)

    def flush_refusals(self, *, now: dt.datetime | None = None, everything: bool = False) -> int:
        """Write the counts of refusal windows that ended (all open ones with
        ``everything``, at shutdown); how many records were written."""
        now = now or utcnow()
        flushes = self.refusals.drain(now) if everything else self.refusals.due(now)
        if flushes:
            with self.db.session() as session:
                self._write_flushes(session, flushes, now=now)
        return len(flushes)

    def _write_flushes(self, session: Session, flushes: list[Flush], *, now: dt.datetime) -> None:
        for f in flushes:
            reason = f"{f.count} more refusals ({f.key.reason}) in the window"
            self._write_refusal(
                session, f.key, reason=reason, count=f.count, details=f.summary(), now=now
            )

    @staticmethod
    def _write_refusal(
        session: Session,
        key: RefusalKey,
        *,
        reason: str,
        count: int,
        details: dict[str, Any],
        now: dt.datetime,
    ) -> None:
        if key.kind == "attestation":
            if key.tenant_id is None or key.device_pk is None:
                raise RuntimeError("broken invariant: an attestation refusal without a device")
            attestation.record_refusal(
                session,
                tenant_id=key.tenant_id,
                device_pk=key.device_pk,
                reason=reason,
                count=count,
                details={k: v for k, v in details.items() if k != "reason"},
                now=now,
            )
            return
        audit.append(
            session,
            actor=key.actor,
            action=key.action,
            subject=key.subject,
            tenant_id=key.tenant_id,
            outcome="refused",
            details={**details, "count": count, "reason": reason},
            now=now,
        )
