"""The application context: database, PKI and settings of one running fleetward.

Built once per process (``AppContext.from_settings``) and handed to the API,
the CLI and the runtime's workers. Domains never see it: they take the
explicit pieces they need (a ``Database``, a ``Pki``, a home directory).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from sqlalchemy.orm import Session

from fleetward import audit, identity, provisioning
from fleetward.config import Settings
from fleetward.errors import FleetwardError
from fleetward.identity import KeyAttester, Pki, ServicePki
from fleetward.keys import Signer
from fleetward.keys.ring import KeyRing
from fleetward.provisioning import verify_renewal_attestation
from fleetward.store import Database
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
        """Record a fleetward error raised inside as a refused attempt, and re-raise."""
        try:
            yield
        except FleetwardError as exc:
            audit.record_refusal(
                self.db,
                actor=actor,
                action=action,
                subject=subject,
                reason=exc.detail,
                tenant_id=tenant_id,
            )
            raise
