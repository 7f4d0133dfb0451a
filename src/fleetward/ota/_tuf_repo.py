"""TUF metadata for one tenant's repository, built with python-tuf's metadata API.

Pure: signers and the current metadata go in, signed ``Metadata`` objects
come out. The layout a stock ``tuf.ngclient.Updater`` expects:

- ``root``: threshold (default 2 of 3) over keys that can stay offline;
  it names the keys of ``targets``, ``snapshot`` and ``timestamp``.
- ``targets``: signed by the targets key; holds no files itself, it only
  **delegates** each product to a role ``product-<name>`` whose keys are the
  product's release signers, with its own threshold, for paths
  ``<product>/*/*``.
- ``product-<name>``: the product's releases, each a target
  ``<product>/<version>/<filename>`` whose ``custom`` field carries version,
  hardware compatibility and the release id.
- ``snapshot`` and ``timestamp``: online keys, refreshed before expiry.
- Consistent snapshots: metadata ``<version>.<role>.json``, target files
  ``<dir>/<sha256>.<filename>``.

:class:`TufSigner` adapts any :class:`fleetward.keys.Signer` (file or PKCS#11)
to securesystemslib's signer interface.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from securesystemslib.signer import Key, Signature, SSlibKey
from securesystemslib.signer import Signer as SslibSigner
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from fleetward.keys import Signer

__all__ = [
    "EXPIRY",
    "TufSigner",
    "build_product",
    "build_root",
    "build_snapshot",
    "build_targets",
    "build_timestamp",
    "product_role",
    "public_key",
]

# How long each role's metadata is valid. Timestamp and snapshot are
# refreshed at half-life by the publisher; a device that sees an expired
# timestamp refuses to update (freeze attack).
EXPIRY = {
    "root": dt.timedelta(days=365),
    "targets": dt.timedelta(days=90),
    "product": dt.timedelta(days=90),
    "snapshot": dt.timedelta(days=7),
    "timestamp": dt.timedelta(days=1),
}


def _scheme(signer: Signer) -> str:
    key = signer.public_key()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
        return "ecdsa-sha2-nistp256"
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1":
        return "ecdsa-sha2-nistp384"
    raise ValueError("TUF keys must be P-256, P-384 or Ed25519")


def public_key(signer: Signer) -> SSlibKey:
    """The TUF key of a fleetward signer (key id = hash of its canonical form)."""
    return SSlibKey.from_crypto(signer.public_key(), scheme=_scheme(signer))


class TufSigner(SslibSigner):
    """A fleetward signer in securesystemslib's clothes.

    fleetward signers hash with the curve's hash (SHA-256 for P-256) and return
    DER ECDSA signatures, which is what ``ecdsa-sha2-nistp256`` verifies.
    """

    def __init__(self, signer: Signer) -> None:
        self._signer = signer
        self._key = public_key(signer)

    @property
    def public_key(self) -> Key:
        return self._key

    def sign(self, payload: bytes) -> Signature:
        return Signature(self._key.keyid, self._signer.sign(payload).hex())

    @classmethod
    def from_priv_key_uri(
        cls, priv_key_uri: str, public_key: Key, secrets_handler: Any = None
    ) -> TufSigner:
        raise NotImplementedError("open fleetward signers with fleetward.keys")


def product_role(product: str) -> str:
    """The delegated role that signs a product's releases."""
    return f"product-{product}"


def _sign(signed: Any, signers: Iterable[Signer]) -> Metadata[Any]:
    md: Metadata[Any] = Metadata(signed)
    for s in signers:
        md.sign(TufSigner(s), append=True)
    return md


@dataclass(frozen=True)
class RoleKeys:
    """Signers and threshold of one role."""

    signers: Sequence[Signer]
    threshold: int


def build_root(
    *,
    version: int,
    root: RoleKeys,
    targets: RoleKeys,
    snapshot: Signer,
    timestamp: Signer,
    now: dt.datetime,
    sign_with: Sequence[Signer] | None = None,
) -> Metadata[Root]:
    """A root (version ``version``), signed by ``sign_with`` (default: every
    root key). A rotation signs the new root with the old keys too."""
    signed = Root(version=version, expires=now + EXPIRY["root"], consistent_snapshot=True)
    for s in root.signers:
        signed.add_key(public_key(s), "root")
    for s in targets.signers:
        signed.add_key(public_key(s), "targets")
    signed.add_key(public_key(snapshot), "snapshot")
    signed.add_key(public_key(timestamp), "timestamp")
    signed.roles["root"].threshold = root.threshold
    signed.roles["targets"].threshold = targets.threshold
    return _sign(signed, sign_with if sign_with is not None else root.signers)


def build_targets(
    *,
    version: int,
    products: Mapping[str, RoleKeys],
    signers: Sequence[Signer],
    now: dt.datetime,
) -> Metadata[Targets]:
    """Top-level targets: no files, one terminating delegation per product."""
    keys: dict[str, Key] = {}
    roles: dict[str, DelegatedRole] = {}
    for product, role_keys in sorted(products.items()):
        keyids = []
        for s in role_keys.signers:
            k = public_key(s)
            keys[k.keyid] = k
            keyids.append(k.keyid)
        name = product_role(product)
        roles[name] = DelegatedRole(
            name=name,
            keyids=keyids,
            threshold=role_keys.threshold,
            terminating=True,
            paths=[f"{product}/*/*"],  # <product>/<version>/<file>; "*" stops at "/"
        )
    signed = Targets(
        version=version,
        expires=now + EXPIRY["targets"],
        delegations=Delegations(keys=keys, roles=roles) if roles else None,
    )
    return _sign(signed, signers)


@dataclass(frozen=True)
class ReleaseTarget:
    """What a product role lists for one release."""

    path: str  # <product>/<version>/<filename>
    length: int
    sha256: str
    custom: Mapping[str, Any]


def build_product(
    *,
    version: int,
    releases: Iterable[ReleaseTarget],
    signers: Sequence[Signer],
    now: dt.datetime,
) -> Metadata[Targets]:
    """A product role's metadata listing its deployable releases."""
    targets = {
        r.path: TargetFile(
            length=r.length,
            hashes={"sha256": r.sha256},
            path=r.path,
            unrecognized_fields={"custom": dict(r.custom)},
        )
        for r in releases
    }
    signed = Targets(version=version, expires=now + EXPIRY["product"], targets=targets)
    return _sign(signed, signers)


def build_snapshot(
    *, version: int, roles: Mapping[str, int], signer: Signer, now: dt.datetime
) -> Metadata[Snapshot]:
    """Snapshot: the version of every targets role (``targets`` and products)."""
    meta = {f"{name}.json": MetaFile(version=v) for name, v in sorted(roles.items())}
    signed = Snapshot(version=version, expires=now + EXPIRY["snapshot"], meta=meta)
    return _sign(signed, [signer])


def build_timestamp(
    *, version: int, snapshot_version: int, signer: Signer, now: dt.datetime
) -> Metadata[Timestamp]:
    """Timestamp: the current snapshot version."""
    signed = Timestamp(
        version=version,
        expires=now + EXPIRY["timestamp"],
        snapshot_meta=MetaFile(version=snapshot_version),
    )
    return _sign(signed, [signer])
