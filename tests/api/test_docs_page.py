"""The API docs page works offline and runs only what fleetward ships.

The page references local URLs only, each with the SRI hash the vendored
Swagger UI's manifest records; every asset is served with its content type
and bytes that match that hash; the page's Content-Security-Policy allows
only 'self' (data: for images: swagger-ui.css embeds its icons) and no
inline script. If Debian's chromium is installed, the
page renders with the network cut off.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from fleetward.api.routes.docs import ASSETS, DOCS, manifest


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str | None]] = []  # (tag, url, integrity)
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        url = a.get("src") or a.get("href")
        if url:
            self.refs.append((tag, url, a.get("integrity")))
        self._in_script = tag == "script" and not a.get("src")

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


def _sri(data: bytes, integrity: str) -> bool:
    algorithm, _, digest = integrity.partition("-")
    return base64.b64encode(hashlib.new(algorithm, data).digest()).decode() == digest


def test_the_docs_page_references_only_local_pinned_assets(client: TestClient) -> None:
    resp = client.get(DOCS)
    assert resp.status_code == 200
    csp = resp.headers["content-security-policy"]
    sources = re.findall(r"(?:^|;\s*)([a-z-]+-src) ([^;]+)", csp)
    assert sources, csp
    # Only this origin; data: images for the icons swagger-ui.css embeds.
    allowed = {"'self'", "'none'"}
    for directive, value in sources:
        ok = allowed | ({"'self' data:"} if directive == "img-src" else set())
        assert value.strip() in ok, csp
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    page = _Refs()
    page.feed(resp.text)
    assert page.inline_scripts == 0
    assert page.refs
    files = manifest()["files"]
    for tag, url, integrity in page.refs:
        assert url.startswith(ASSETS + "/"), f"not a local asset: {url}"
        name = url.removeprefix(ASSETS + "/")
        assert name in files, url
        if tag == "script" or name.endswith(".css"):  # code and styles carry their hash
            assert integrity == files[name]["integrity"], url
    assert "cdn" not in resp.text.lower()


def test_every_asset_matches_the_manifest(client: TestClient) -> None:
    recorded = manifest()
    assert re.fullmatch(r"\d+\.\d+\.\d+", recorded["version"])
    for name, entry in recorded["files"].items():
        resp = client.get(f"{ASSETS}/{name}")
        assert resp.status_code == 200, name
        assert resp.headers["content-type"] == entry["content_type"], name
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert hashlib.sha256(resp.content).hexdigest() == entry["sha256"], name
        assert _sri(resp.content, entry["integrity"]), name
        assert len(resp.content) == entry["bytes"], name


def test_only_listed_assets_are_served(client: TestClient) -> None:
    for name in ("MANIFEST.json", "..%2F..%2Fopenapi.py", "swagger-ui-bundle.js.map", "x"):
        resp = client.get(f"{ASSETS}/{name}")
        assert resp.status_code == 404, name
        assert resp.headers["content-type"] == "application/problem+json"


@pytest.mark.slow
@pytest.mark.sqlite_run_only  # a browser renders static assets: the database does not matter
def test_the_docs_page_renders_offline(live: str) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed")
    # Only the loopback server is reachable: any other fetch fails, so a
    # rendered operation list proves every asset came from fleetward.
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--proxy-server=127.0.0.1:9",
            "--proxy-bypass-list=127.0.0.1",
            "--virtual-time-budget=10000",
            "--dump-dom",
            f"{live}{DOCS}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "opblock" in dom and "/api/v1/tenant" in dom, dom[:2000]
