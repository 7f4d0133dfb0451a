"""Security settings apply to the next request, in every worker process.

Issuance reads the tenant's policy (``allow_unattested_keys_in_production``,
the certificate lifetime) and the active issuing CA on every request; only
the parsed CA certificate is cached. The fast tests use two :class:`Pki`
objects on one database, as two worker processes have; the slow one runs
``fleetward serve --workers 2`` and watches which worker process answers
each connection.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from fleetward.identity import ca_service, issuance
from fleetward.identity.pki import Pki
from fleetward.keys.ring import KeyRing
from fleetward.runtime.context import AppContext
from fleetward.store import utcnow
from fleetward.tenancy import service as tenancy
from fleetward.tenancy.roles import Principal
from tests.helpers import csr_pem, new_key


def admin(ctx: AppContext, token: str) -> Principal:
    with ctx.db.read() as s:
        return tenancy.authenticate(s, token)


def other_worker_pki(ctx: AppContext) -> Pki:
    """A second process's PKI context: its own caches, the same database and keys."""
    settings = ctx.settings
    keyring = KeyRing(keys_dir=settings.keys_dir, passphrase=settings.key_passphrase())
    return Pki(keyring=keyring, public_url=settings.public_url, crl_dir=ctx.pki.crl_dir)


def enroll(ctx: AppContext, pki: Pki, who: Principal, device_id: str) -> issuance.BatchResult:
    item = issuance.BatchItem(device_id=device_id, csr=csr_pem(new_key(), device_id))
    [result] = issuance.enroll_many(ctx.db, pki, who, items=[item], environment="production")
    return result


def test_policy_changes_apply_to_the_next_issuance_in_another_worker(
    ctx: AppContext, admin_token: str
) -> None:
    who = admin(ctx, admin_token)
    worker = other_worker_pki(ctx)
    assert enroll(ctx, worker, who, "warm-1").issued is not None  # the worker has read the policy

    with ctx.db.session() as s:  # the change, made "through another worker"
        tenancy.set_allow_unattested(s, who, allow=False)
    refused = enroll(ctx, worker, who, "soft-1")
    assert isinstance(refused.error, issuance.UnattestedKeyError)

    with ctx.db.session() as s:
        tenancy.set_cert_lifetime(s, who, days=7)
        tenancy.set_allow_unattested(s, who, allow=True)
    issued = enroll(ctx, worker, who, "soft-2").issued
    assert issued is not None
    lifetime = issued.not_after - utcnow()  # not_before is backdated for clock skew
    assert dt.timedelta(days=7) - dt.timedelta(minutes=1) < lifetime <= dt.timedelta(days=7)


def test_ca_rotation_applies_to_the_next_issuance_in_another_worker(
    ctx: AppContext, admin_token: str
) -> None:
    who = admin(ctx, admin_token)
    worker = other_worker_pki(ctx)
    before = enroll(ctx, worker, who, "before-rotation").issued
    assert before is not None

    with ctx.db.session() as s:  # rotated through ctx.pki: the worker's caches never hear of it
        tenant = tenancy.get_tenant(s, who.tenant_id)
        root = ca_service.root_ca(s, tenant_id=tenant.id)
        pending, csr = ca_service.create_issuing_csr(
            s, ctx.pki, tenant=tenant, environment="production", actor="test"
        )
        cert = ca_service.sign_issuing_csr_offline(
            root_cert_pem=(root.certificate_pem or "").encode(),
            root_signer=ctx.pki.keyring.open(root.key_uri),
            csr_pem=csr,
            environment="production",
        )
        ca_service.import_issuing_certificate(
            s, ctx.pki, tenant_id=tenant.id, ca_id=pending.id, certificate_pem=cert, actor="test"
        )
        new_ca = pending.id

    after = enroll(ctx, worker, who, "after-rotation").issued
    assert after is not None
    assert before.ca_id != new_ca
    assert after.ca_id == new_ca
    after.certificate.verify_directly_issued_by(x509.load_pem_x509_certificate(cert))


def test_parsed_ca_certificate_cache_follows_the_pem(ctx: AppContext) -> None:
    """The one cache left is keyed by the PEM too: a CA row whose certificate
    changes is parsed again, never answered with the old certificate."""
    with ctx.db.read() as s:
        cas = [c for c in ca_service.list_cas(s, tenant_id=1) if c.certificate_pem]
    first, second = cas[0], cas[1]
    assert first.certificate_pem is not None and second.certificate_pem is not None
    pki = other_worker_pki(ctx)
    a = pki.certificate_from_pem(first.id, first.certificate_pem)
    b = pki.certificate_from_pem(first.id, second.certificate_pem)
    assert a.subject.rfc4514_string() == first.subject
    assert b.subject.rfc4514_string() == second.subject
    assert pki.certificate_from_pem(first.id, first.certificate_pem) is a  # still cached


# -- two real worker processes ------------------------------------------------

CONNECTIONS = 24  # each hashed to a worker by its source port: P(all on one) = 2**-23


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tcp_sockets() -> list[tuple[int, int, str, int]]:
    """(local port, remote port, state, inode) of every IPv4 TCP socket here."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        rows.append(
            (int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16), f[3], int(f[9]))
        )
    return rows


def _descendants(root: int) -> list[int]:
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, pp in parent.items() if pp == pid]
        found += children
        frontier += children
    return found


def _owner(server: int, conn: http.client.HTTPConnection, pids: list[int]) -> int:
    """The process holding the server end of ``conn``."""
    assert conn.sock is not None
    client_port = conn.sock.getsockname()[1]
    [inode] = [
        i
        for lp, rp, state, i in _tcp_sockets()
        if lp == server and rp == client_port and state == "01"  # ESTABLISHED, not TIME_WAIT
    ]
    link = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == link:
                    return pid
            except OSError:
                continue
    raise AssertionError(f"no worker holds {link}")


class Workers:
    """``fleetward serve --workers 2`` on a loopback port, and keep-alive clients."""

    def __init__(self, ctx: AppContext, token: str) -> None:
        self.port = _free_port()
        self.token = token
        fleetward = Path(sys.executable).with_name("fleetward")
        env = {**os.environ, "FLEETWARD_DATABASE_URL": ctx.settings.database_url}
        self.proc = subprocess.Popen(
            [
                str(fleetward), "--home", str(ctx.settings.home), "serve",
                "--port", str(self.port), "--device-port", str(_free_port()),
                "--workers", "2", "--crl-interval", "3600",
            ],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while sum(1 for lp, _, st, _ in _tcp_sockets() if lp == self.port and st == "0A") < 2:
            assert self.proc.poll() is None, self.proc.communicate()[0]
            assert time.monotonic() < deadline, "two workers did not start listening"
            time.sleep(0.05)
        self.conns = [
            http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            for _ in range(CONNECTIONS)
        ]
        for c in self.conns:  # wait until each connection's worker answers
            status, _ = self.call(c, "GET", "/api/v1/comms/broker")
            assert status == 200
        self.pids = _descendants(self.proc.pid)

    def call(
        self, conn: http.client.HTTPConnection, method: str, path: str, body: Any = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        data = json.dumps(body) if body else None
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            conn.close()  # the server closed an idle keep-alive connection: open a new one
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
        raw = resp.read()
        is_json = "json" in resp.getheader("content-type", "")
        return resp.status, json.loads(raw) if is_json else raw

    def owner(self, conn: http.client.HTTPConnection) -> int:
        return _owner(self.port, conn, self.pids)

    def set_allow(self, allow: bool) -> int:
        """PATCH the option through the first connection; the worker that applied it."""
        conn = self.conns[0]
        status, body = self.call(
            conn, "PATCH", "/api/v1/tenant", {"allow_unattested_keys_in_production": allow}
        )
        assert status == 200, body
        assert body["allow_unattested_keys_in_production"] is allow
        return self.owner(conn)

    def enroll_all(self, prefix: str) -> list[tuple[int, int, Any]]:
        """Enroll one production software key through every connection:
        (worker, status, body) for each."""
        out = []
        for i, conn in enumerate(self.conns):
            device = f"{prefix}-{i}"
            csr = csr_pem(new_key(), device).decode()
            status, body = self.call(
                conn, "POST", f"/api/v1/devices/{device}/certificates", {"csr": csr}
            )
            out.append((self.owner(conn), status, body))
        return out

    def stop(self) -> str:
        for c in self.conns:
            c.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out


@pytest.mark.slow
def test_setting_change_through_one_worker_holds_at_once_in_the_other(
    ctx: AppContext, admin_token: str
) -> None:
    """Both workers issue (and so have read the policy), the option is turned
    off through one of them, and every enrollment right after, on either
    worker, is refused; turned on again, every one is issued."""
    workers = Workers(ctx, admin_token)
    try:
        workers.set_allow(True)
        warm = workers.enroll_all("warm")
        assert all(status == 201 for _, status, _ in warm), warm
        assert len({pid for pid, _, _ in warm}) == 2, "both workers must have served"

        changed_by = workers.set_allow(False)
        after = workers.enroll_all("soft")
        other = [(pid, status, body) for pid, status, body in after if pid != changed_by]
        assert other, "no request reached the worker that did not apply the change"
        for _, status, body in after:
            assert status == 422, body
            assert body["type"] == "urn:fleetward:problem:unattested-key"

        changed_by = workers.set_allow(True)
        again = workers.enroll_all("again")
        assert any(pid != changed_by for pid, _, _ in again)
        assert all(status == 201 for _, status, _ in again), again
    finally:
        output = workers.stop()
    assert "Traceback" not in output, output
