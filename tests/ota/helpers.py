"""Helpers for OTA tests: operators, releases, and a stock TUF client."""

from __future__ import annotations

import hashlib
import json
import ssl
from pathlib import Path
from typing import Any

import httpx
from tuf.ngclient import Updater

from fleetward import ota
from fleetward.agent import HttpsFetcher
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy

SBOM = json.dumps(
    {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "components": [{"name": "openssl", "version": "3.0.19"}, {"name": "busybox"}],
    }
).encode()


def measurements(image: bytes) -> dict[str, str]:
    """Reference measurements whose application stage is ``image``'s hash."""
    return {
        "bootloader": hashlib.sha256(b"bootloader-v1").hexdigest(),
        "kernel": hashlib.sha256(b"kernel-v1").hexdigest(),
        "application": hashlib.sha256(image).hexdigest(),
    }


def operator(ctx: AppContext, role: str, name: str) -> str:
    with ctx.db.session() as s:
        tenant = tenancy.get_tenant_by_name(s, "default")
        _, token = tenancy.create_token(s, tenant=tenant, name=name, role=role, actor="test")
    return token


def call(live: str, token: str, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(
        method, live + path, headers={"Authorization": f"Bearer {token}"}, timeout=30, **kw
    )


def upload(
    live: str,
    token: str,
    *,
    product: str,
    version: str,
    image: bytes,
    hardware: str = "board-a",
    sbom: bytes | None = SBOM,
    filename: str = "fw.bin",
    meas: dict[str, str] | None = None,
) -> httpx.Response:
    files: dict[str, Any] = {"artifact": (filename, image, "application/octet-stream")}
    if sbom is not None:
        files["sbom"] = ("sbom.json", sbom, "application/json")
    data = {
        "product": product,
        "version": version,
        "hardware": hardware,
        "measurements": json.dumps(meas if meas is not None else measurements(image)),
    }
    return call(live, token, "POST", "/api/v1/releases", data=data, files=files)


def updater(ctx: AppContext, directory: Path, root: bytes) -> Updater:
    """A stock python-tuf client with its own metadata directory, fetching
    from the live device plane (HTTPS, the service CA; see ``planes``)."""
    directory.mkdir(parents=True, exist_ok=True)
    base = f"https://127.0.0.1:{ctx.settings.device_port}/tuf/default"
    fetcher = HttpsFetcher(ssl.create_default_context(cafile=str(ctx.service_pki.ca_cert)))
    return Updater(
        metadata_dir=str(directory),
        metadata_base_url=f"{base}/metadata/",
        target_dir=str(directory),
        target_base_url=f"{base}/targets/",
        bootstrap=root,
        fetcher=fetcher,
    )


def review_passed(ctx: AppContext, campaign_id: int) -> None:
    """Record a passed controls review for the campaign, so it may go past its
    first wave: these tests are about waves and gates; the review itself is
    tested in tests/trustmap/test_review.py."""
    with ctx.db.session() as s:
        c = s.get(ota.Campaign, campaign_id)
        assert c is not None
        item = ota.ReviewItem(
            "controls", True, "reviewed by the test (tests/trustmap/test_review.py)"
        )
        ota.record_review(s, c, items=[item], map_digest=None)
