"""The publisher: CRLs and audit checkpoints, and the TUF online-role refresher.

:class:`Publisher` is fleetward's one CRL publisher (under the ``publisher``
lease, so one process of all that share the database builds them). It checks
every second (or ``crl_interval``, if shorter) and rebuilds at once when a
CRL is due (a revocation since the last one, or past half its validity), so
a revocation is in the CRL within ``crl_interval`` as long as one rebuild
takes less than that (about 5 s at 1,000,000 entries, see
``benchmarks/crl.py``). Every ``checkpoint_interval`` seconds it also signs
an audit checkpoint when the log grew. With ``isolate`` (``fleetward
serve``) the rebuild runs in a child process, so building a million-entry
CRL never holds the API process's GIL while it answers OCSP and enrollment.

:class:`TufRefresher` re-signs each repository's timestamp and snapshot
past half their validity (else devices would see them expire and, rightly,
refuse every update), under the ``tuf-refresh`` lease.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from fleetward import audit, identity, ota
from fleetward.config import Settings
from fleetward.runtime.context import AppContext
from fleetward.runtime.worker import Every, PeriodicWorker

__all__ = ["TUF_REFRESH_SECONDS", "Publisher", "TufRefresher"]

TUF_REFRESH_SECONDS = 60.0
POLL_SECONDS = 1.0  # the publisher's check; the CRL interval is the promise


def checkpoint_if_grown(ctx: AppContext) -> bool:
    """Sign an audit checkpoint if entries came since the last; returns whether it did."""
    with ctx.db.session() as s:
        return audit.checkpoint_if_grown(s, signer=ctx.checkpoint_signer())


def publish_round(ctx: AppContext, *, checkpoint: bool) -> int:
    """Rebuild the CRLs that are due (and checkpoint); returns how many were rebuilt."""
    built = len(identity.publish_crls(ctx.db, ctx.pki))
    if checkpoint:
        checkpoint_if_grown(ctx)
    return built


_child: AppContext | None = None


def _round_in_child(settings: Settings, checkpoint: bool) -> int:
    """Entry point in the publisher's child process (keeps its context)."""
    global _child
    if _child is None:
        _child = AppContext.from_settings(settings)
    return publish_round(_child, checkpoint=checkpoint)


class Publisher(PeriodicWorker):
    """CRL publication and audit checkpoints (see the module docstring)."""

    def __init__(
        self,
        ctx: AppContext,
        *,
        crl_interval: float = 10.0,
        checkpoint_interval: float = 600.0,
        isolate: bool = False,
    ) -> None:
        super().__init__(
            "publisher",
            interval=min(POLL_SECONDS, crl_interval),
            lease="publisher",
            db=ctx.db,
            lease_ttl=max(3 * crl_interval, 60.0),
            # Rebuilding a million-entry CRL takes seconds; never call that stale.
            stale_after=max(60.0, 3 * crl_interval),
        )
        self.ctx = ctx
        self.crl_interval = crl_interval
        self.checkpoint_interval = checkpoint_interval
        self.isolate = isolate
        self._checkpoint = Every(checkpoint_interval)
        self._pool: ProcessPoolExecutor | None = None
        self.rebuilt = 0  # CRLs rebuilt by this worker

    def work(self) -> None:
        checkpoint = self._checkpoint.due()
        if not checkpoint and not identity.crls_due(self.ctx.db, self.ctx.pki):
            return
        if not self.isolate:
            self.rebuilt += publish_round(self.ctx, checkpoint=checkpoint)
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn")
            )
        self.rebuilt += self._pool.submit(_round_in_child, self.ctx.settings, checkpoint).result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class TufRefresher(PeriodicWorker):
    """Re-signs TUF timestamp and snapshot at half-life (see the module docstring)."""

    def __init__(self, ctx: AppContext, *, interval: float = TUF_REFRESH_SECONDS) -> None:
        super().__init__(
            "tuf-refresh",
            interval=interval,
            lease="tuf-refresh",
            db=ctx.db,
            initial_delay=min(1.0, interval),
        )
        self.ctx = ctx

    def work(self) -> None:
        with self.ctx.db.session() as s:
            ota.refresh_online_roles(s, self.ctx.pki.keyring)
