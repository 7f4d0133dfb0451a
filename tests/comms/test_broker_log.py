"""Which Mosquitto log lines count as refused handshakes (pure)."""

from __future__ import annotations

import io
from pathlib import Path

from fleetward.comms.mosquitto import MosquittoProcess
from fleetward.comms.mosquitto_conf import BrokerFiles


class FakeProc:
    def __init__(self, text: str) -> None:
        self.stdout = io.StringIO(text)


def test_refused_certificates_count_and_vanished_clients_do_not() -> None:
    seen: list[tuple[str, str]] = []
    proc = MosquittoProcess(
        BrokerFiles(Path("/nonexistent")), on_handshake_refused=lambda p, r: seen.append((p, r))
    )
    proc.proc = FakeProc(
        "1: New connection from 127.0.0.1:5000 on port 8883.\n"
        "1: OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed\n"
        "2: Client connection from 127.0.0.1 failed: "
        "error:0A000086:SSL routines::certificate verify failed.\n"
        "3: Client connection from 127.0.0.1 failed: "
        "error:0A000126:SSL routines::unexpected eof while reading.\n"
        "4: New connection from 127.0.0.1:5001 on port 8883.\n"
        "4: OpenSSL Error[0]: error:0A000126:SSL routines::unexpected eof while reading\n"
    )  # type: ignore[assignment]
    proc._read_log()
    assert seen == [
        ("127.0.0.1:5000", "error:0A000086:SSL routines::certificate verify failed"),
        ("127.0.0.1", "error:0A000086:SSL routines::certificate verify failed"),
    ]
