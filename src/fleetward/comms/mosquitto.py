"""Running Mosquitto: the child process and its supervision.

:class:`MosquittoProcess` starts the broker on a directory that
:func:`.sync.prepare` filled, reads its log (a refused TLS handshake is
reported to ``on_handshake_refused``), reloads it (SIGHUP) and stops it.
:func:`restart_if_exited` is the supervisor's round: the runtime calls it
periodically (``fleetward up``) and counts the restarts.
"""

from __future__ import annotations

import logging
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fleetward.comms.mosquitto_conf import BrokerFiles
from fleetward.errors import BrokerError

__all__ = ["MosquittoProcess", "restart_if_exited"]

log = logging.getLogger("fleetward.broker")

MAX_LOG_LINES = 2000  # the broker's last log lines kept for error messages

# Only a refused peer certificate counts: a device that vanishes without a
# TLS close also logs an OpenSSL error ("unexpected eof"), and is not refused.
_REFUSED = (
    r"(?:certificate verify failed|certificate revoked|peer did not return a certificate|"
    r"no certificate|unsupported certificate|certificate expired|bad certificate)"
)
# Mosquitto reports a refused handshake in one of two shapes, depending on
# whether it failed while accepting or after the connection was registered.
_HANDSHAKE = re.compile(rf"OpenSSL Error\[\d+\]: (?P<reason>.*{_REFUSED}.*)$")
_ACCEPT_FAILED = re.compile(
    rf"Client connection from (?P<peer>\S+) failed: (?P<reason>.*{_REFUSED}.*?)\.?$"
)
_NEW_CONN = re.compile(r"New connection from (?P<peer>\S+) on port (?P<port>\d+)")


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM the broker when fleetward dies, however it dies
    (uvicorn re-raises SIGTERM after shutdown, skipping ``finally`` blocks)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: stop() still terminates it on a clean exit


class MosquittoProcess:
    """A Mosquitto child process on a prepared directory."""

    def __init__(
        self, files: BrokerFiles, *, on_handshake_refused: Callable[[str, str], None] | None = None
    ) -> None:
        self.files = files
        self.on_handshake_refused = on_handshake_refused
        self.proc: subprocess.Popen[str] | None = None
        self.log_lines: list[str] = []
        self._reader: threading.Thread | None = None

    @staticmethod
    def executable() -> str:
        """Path of the mosquitto binary.

        Raises:
            BrokerError: it is not installed.
        """
        found = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if found is None:
            raise BrokerError("mosquitto is not installed (scripts/bootstrap installs it)")
        return found

    def start(self, *, port: int, timeout: float = 10.0) -> None:
        """Start the broker and wait until its device port accepts connections.

        Raises:
            BrokerError: it exited or did not listen in time.
        """
        # Mosquitto block-buffers its log on a pipe; line-buffer it so refused
        # handshakes are seen as they happen.
        stdbuf = shutil.which("stdbuf")
        prefix = [stdbuf, "-oL"] if stdbuf else []
        self.proc = subprocess.Popen(
            [*prefix, self.executable(), "-c", str(self.files.config)],
            preexec_fn=_die_with_parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                time.sleep(0.1)
                raise BrokerError("mosquitto exited: " + " | ".join(self.log_lines[-5:]))
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise BrokerError(f"mosquitto did not listen on port {port} within {timeout} s")

    def _read_log(self) -> None:
        if self.proc is None or self.proc.stdout is None:
            raise BrokerError("mosquitto's log is read only after start()")
        peer = "unknown"
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if len(self.log_lines) > MAX_LOG_LINES:
                del self.log_lines[: MAX_LOG_LINES // 2]
            self.log_lines.append(line)
            if m := _NEW_CONN.search(line):
                peer = m.group("peer")
            elif (m := _HANDSHAKE.search(line)) and self.on_handshake_refused is not None:
                self.on_handshake_refused(peer, m.group("reason"))
            elif (m := _ACCEPT_FAILED.search(line)) and self.on_handshake_refused is not None:
                self.on_handshake_refused(m.group("peer"), m.group("reason"))

    def reload(self) -> None:
        """SIGHUP: re-read CA and CRL files."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        """Terminate the broker."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


def restart_if_exited(process: MosquittoProcess, *, port: int) -> bool:
    """The supervisor's round: restart Mosquitto if it exited (devices
    reconnect with backoff; the table and trust files are on disk), and say
    why it exited.

    Returns:
        Whether it was restarted.

    Raises:
        BrokerError: it did not come back (the next round tries again).
    """
    proc = process.proc
    if proc is None or proc.poll() is None:
        return False
    log.error(
        "mosquitto exited (%s); restarting. Last lines: %s",
        proc.returncode,
        " | ".join(process.log_lines[-5:]),
    )
    process.stop()
    process.start(port=port)
    return True
