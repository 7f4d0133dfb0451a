"""The workers ``fleetward up`` runs beside the API and the broker.

Each wraps a domain's round function in a :class:`PeriodicWorker` and holds
the connections the round needs; the scheduling is all here:

==================== ======== ==================== ========================================
worker               interval lease                round (domain)
==================== ======== ==================== ========================================
campaign-driver      1 s      campaign-driver      ``ota.driver.drive_round`` (stragglers
                                                   re-offered every ``resend`` s)
detection            0.5 s    detection            ``detection.runner.detect``; ``sweep``
                                                   every 60 s; ``prune`` every hour
compliance-tracker   2 s      compliance-tracker   ``response.tracker.track_round``;
                                                   ``trust_round`` (CA trust windows);
                                                   ``renew_again`` every ``resend`` s
ingest (client id)   0.2 s    none (shared         ``telemetry.ingest.MqttIngest.ingest_round``
                              subscription)
vulns                30 s     vulns                ``vulns.runner.vuln_round`` (exposure,
                                                   remediation, alerts, CRA deadlines, the
                                                   review every 7 days)
trustmap             5 s      trustmap             ``trustmap.runner.review_gates`` (campaigns
                                                   after their first wave); ``check_maps``
                                                   every 60 s (drift alerts)
demo-fleet           0.5 s    none                 ``sim.demo.Demo.advance`` until the fleet is up
==================== ======== ==================== ========================================

Each broker connection uses the service identity of its job
(:mod:`fleetward.comms.identities`): the campaign driver ``ota`` (offers out,
OTA reports in), the ingest workers ``ingest``, the compliance tracker's
renewal reminders ``commands``.

The publisher and the TUF refresher are in :mod:`.publisher`, the broker's
workers in :mod:`.broker`.
"""

from __future__ import annotations

import datetime as dt
from functools import partial
from pathlib import Path

import paho.mqtt.client as mqtt

from fleetward.comms import CommandSender, service_client
from fleetward.detection import runner as detection
from fleetward.ota import driver
from fleetward.response import LiveEffects, tracker
from fleetward.runtime.context import AppContext
from fleetward.runtime.worker import Every, PeriodicWorker
from fleetward.sim import Broker
from fleetward.sim.demo import Demo
from fleetward.store import Database
from fleetward.telemetry import Ingestor, MqttIngest
from fleetward.trustmap import runner as trustmap_runner
from fleetward.vulns import runner as vulns_runner

__all__ = [
    "CampaignDriver",
    "ComplianceTracker",
    "DemoFleet",
    "DetectionRunner",
    "IngestWorker",
    "TrustMapRunner",
    "VulnsRunner",
]


class CampaignDriver(PeriodicWorker):
    """Steps campaigns, sends offers, stores reports (one host, by lease).

    The report subscription opens in the first round this worker leads, so
    a standby host does not take the reports of the one that drives.
    """

    def __init__(self, ctx: AppContext, *, interval: float = 1.0, resend: float = 30.0) -> None:
        super().__init__("campaign-driver", interval=interval, lease="campaign-driver", db=ctx.db)
        self.ctx = ctx
        self.resend = resend
        self.inbox = driver.ReportInbox()
        self.sender = CommandSender(ctx.settings.home, identity="ota")
        self._stragglers = Every(resend)
        self._subscriber: mqtt.Client | None = None

    def work(self) -> None:
        if self._subscriber is None:
            self._subscriber = self.inbox.subscribe(self.ctx.settings.home)
        driver.drive_round(
            self.ctx.db,
            self.inbox,
            send=self.sender.send,
            quiet=dt.timedelta(seconds=self.resend),
            stragglers=self._stragglers.due(),
        )

    def close(self) -> None:
        if self._subscriber is not None:
            self._subscriber.disconnect()
            self._subscriber.loop_stop()
        self.sender.close()


class DetectionRunner(PeriodicWorker):
    """Detection rounds, the periodic sweep and retention (one host, by lease)."""

    def __init__(self, ctx: AppContext, *, interval: float = 0.5) -> None:
        super().__init__("detection", interval=interval, lease="detection", db=ctx.db)
        self.db = ctx.db
        self._sweep = Every(detection.SWEEP_SECONDS, now=True)
        self._prune = Every(detection.PRUNE_SECONDS, now=True)

    def work(self) -> None:
        detection.detect(self.db)
        if self._sweep.due():
            detection.sweep(self.db)
        if self._prune.due():
            detection.prune(self.db)


class VulnsRunner(PeriodicWorker):
    """Vulnerability rounds: exposure, remediation, alerts, CRA deadlines and
    the periodic review (one host, by lease)."""

    def __init__(
        self, ctx: AppContext, *, interval: float = 30.0, review_every: dt.timedelta | None = None
    ) -> None:
        super().__init__("vulns", interval=interval, lease="vulns", db=ctx.db)
        self.db = ctx.db
        self.review_every = review_every or vulns_runner.REVIEW_EVERY

    def work(self) -> None:
        vulns_runner.vuln_round(self.db, review_every=self.review_every)


class TrustMapRunner(PeriodicWorker):
    """Controls reviews of campaigns at the gate after their first wave, and
    periodic checks of every registered trust map (one host, by lease)."""

    def __init__(
        self, ctx: AppContext, *, interval: float = 5.0, check_every: float = 60.0
    ) -> None:
        super().__init__("trustmap", interval=interval, lease="trustmap", db=ctx.db)
        self.db = ctx.db
        self._check = Every(check_every, now=True)

    def work(self) -> None:
        trustmap_runner.review_gates(self.db)
        if self._check.due():
            trustmap_runner.check_maps(self.db)


class ComplianceTracker(PeriodicWorker):
    """Compliance tracking, retired CAs' trust windows and renewal
    reminders (one host, by lease)."""

    def __init__(self, ctx: AppContext, *, interval: float = 2.0, resend: float = 60.0) -> None:
        super().__init__(
            "compliance-tracker", interval=interval, lease="compliance-tracker", db=ctx.db
        )
        self.db = ctx.db
        self.effects = LiveEffects(ctx.settings.home)
        self._renew = Every(resend)
        self.complied = 0  # devices this worker saw comply
        self.superseded = 0  # certificates of retired CAs it revoked
        self.distrusted = 0  # retired CAs whose window it closed

    def work(self) -> None:
        self.complied += tracker.track_round(self.db)
        for t in tracker.trust_round(self.db):
            if t.kind == "distrusted":
                self.distrusted += 1
            else:
                self.superseded += t.revoked
        if self._renew.due():
            tracker.renew_again(self.db, self.effects.command)

    def close(self) -> None:
        self.effects.close()


class IngestWorker(PeriodicWorker):
    """One telemetry ingest client (several split the stream; no lease)."""

    def __init__(self, db: Database, home: Path, *, client_id: str = "fleetward-ingest-1") -> None:
        super().__init__(client_id, interval=0.2, jitter=0.0, initial_delay=0.0, max_backoff=5.0)
        self.client = MqttIngest(
            db, partial(service_client, home, identity="ingest"), client_id=client_id
        )

    @property
    def ingestor(self) -> Ingestor:
        """Its parser, rate limiter and batcher (counters for tests and metrics)."""
        return self.client.ingestor

    def work(self) -> None:
        if not self.client.connected:
            self.client.connect()
        self.client.ingest_round()

    def close(self) -> None:
        self.client.close()


class DemoFleet(PeriodicWorker):
    """``fleetward up --demo``: brings a simulated fleet up once the API answers."""

    def __init__(
        self,
        db: Database,
        *,
        api_url: str,
        device_url: str,
        server_ca: Path,
        broker: Broker,
        devices: int,
        directory: Path,
    ) -> None:
        # Enrolling and connecting the fleet is one long round (up to two minutes).
        super().__init__(
            "demo-fleet", interval=0.5, initial_delay=0.2, stale_after=300.0, join_timeout=150.0
        )
        self.demo = Demo(
            db,
            api_url=api_url,
            device_url=device_url,
            server_ca=server_ca,
            broker=broker,
            devices=devices,
            directory=directory,
        )

    def work(self) -> None:
        self.demo.advance()

    def stop(self) -> None:
        self.demo.cancel()
        super().stop()

    def close(self) -> None:
        self.demo.stop()
