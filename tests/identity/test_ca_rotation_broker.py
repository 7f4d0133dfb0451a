"""After its window, a certificate of a retired issuing CA is refused at
every live broker listener (real Mosquitto, paho and ``openssl s_client``),
while the certificate of the new CA still connects."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from fleetward.identity import rotation
from fleetward.runtime.broker import BrokerRuntime
from fleetward.runtime.context import AppContext
from fleetward.store import utcnow
from fleetward.tenancy.roles import ENVIRONMENTS
from tests.broker import connect, make_device, synced, wait_for
from tests.identity.test_ca_rotation import HOUR, rotate
from tests.response.helpers import renew


def handshake_ok(port: int, ca: Path, cert: Path, key: Path) -> bool:
    """``openssl s_client`` with the device's certificate: whether the broker
    completed the handshake (TLS 1.3 reports a refused client certificate
    after the handshake, so send a byte and look for the alert)."""
    proc = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-CAfile",
            str(ca),
            "-cert",
            str(cert),
            "-key",
            str(key),
            "-verify_return_error",
            "-quiet",
        ],
        input=b"\x10\x00",
        capture_output=True,
        timeout=10,
        check=False,
    )
    text = proc.stderr.decode(errors="replace").lower()
    return "alert" not in text and "error" not in text


@pytest.mark.broker
def test_a_retired_ca_certificate_is_refused_at_every_listener_after_the_window(
    ctx: AppContext, broker: BrokerRuntime, tmp_path: Path
) -> None:
    old_dev = make_device(ctx, tmp_path, "stays-old")
    new_dev = make_device(ctx, tmp_path, "renews")
    synced(broker)
    ca = broker.files.broker_ca
    port = broker.ports["test"]
    rotate(ctx, window=HOUR)
    # Inside the window both certificates are good at their listener.
    synced(broker)
    for creds in (old_dev, new_dev):
        c = connect(port, ca, creds.cert, creds.key, client_id=creds.device_id)
        c.close()
    key = serialization.load_pem_private_key(new_dev.key.read_bytes(), password=None)
    issued = renew(ctx, key, "renews")  # type: ignore[arg-type]
    new_dev.cert.write_bytes(issued.certificate.public_bytes(serialization.Encoding.PEM))

    # The window closes (the compliance tracker's round, an hour later).
    done = rotation.rotation_round(ctx.db, now=utcnow() + 2 * HOUR)
    assert [(t.kind, t.revoked) for t in done] == [("superseded", 1), ("distrusted", 1)]
    synced(broker)
    wait_for(
        lambda: not handshake_ok(port, ca, old_dev.cert, old_dev.key),
        timeout=10, what="the test listener to reload its trust anchors",
    )  # fmt: skip
    for env in ENVIRONMENTS:
        assert not handshake_ok(broker.ports[env], ca, old_dev.cert, old_dev.key), env
        refused = connect(
            broker.ports[env], ca, old_dev.cert, old_dev.key, client_id="stays-old",
            expect_ok=False,
        )  # fmt: skip
        wait_for(refused.disconnected.is_set, what=f"the {env} listener to refuse")
        assert not refused.connected.is_set()
        refused.close()
    assert handshake_ok(port, ca, new_dev.cert, new_dev.key)
    ok = connect(port, ca, new_dev.cert, new_dev.key, client_id="renews")
    ok.close()
