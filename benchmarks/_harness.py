"""Shared plumbing of the fleetward benchmarks (not a benchmark itself).

* :func:`new_installation` sets up a home exactly as ``fleetward init`` does.
* :class:`Server` runs ``fleetward serve`` on that home in a subprocess bound
  to 127.0.0.1, so the load generator never shares the server's GIL.
* :func:`run_load` is a small asyncio HTTP/1.1 keep-alive client. It sends
  pre-encoded requests over N connections and only reads the status line,
  the headers and ``Content-Length`` bytes back, so it costs a few tens of
  microseconds per request: on a 2-core machine the client must leave as
  much CPU as it can to the server it measures.
* :func:`rate` times a callable in a loop on one core (the raw ceilings).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from fleetward.api.context import AppContext
from fleetward.config import Settings
from fleetward.installation import initialise
from fleetward.tenancy import service as tenancy_service

HOST = "127.0.0.1"  # benchmarks never listen on or connect to anything else

# Progress goes to stderr so stdout holds only the tables and the final JSON line.
log = Console(stderr=True, highlight=False)
out = Console(highlight=False, width=140)


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def new_installation(tmp: Path, *, port: int) -> tuple[AppContext, str]:
    """A fresh installation under ``tmp`` whose public URL is ``127.0.0.1:port``."""
    settings = Settings(
        home=tmp / "home",
        database_url=f"sqlite:///{tmp / 'fw.db'}",
        public_url=f"http://{HOST}:{port}",
    )
    ctx, token = initialise(settings, actor="bench")
    # These benchmarks issue software keys into production: that takes the
    # tenant's dangerous option (factory provisioning with attested keys does not).
    with ctx.db.session() as s:
        tenancy_service.set_allow_unattested(s, tenancy_service.authenticate(s, token), allow=True)
    return ctx, token


def _fleetward_command() -> list[str]:
    exe = Path(sys.executable).with_name("fleetward")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from fleetward.cli.main import main; main()"]


@dataclass
class Server:
    """``fleetward serve`` on an initialised home, in its own process group."""

    home: Path
    port: int
    workers: int = 1
    crl_interval: float = 60.0
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def base(self) -> str:
        """Base URL of the server."""
        return f"http://{HOST}:{self.port}"

    def start(self, *, timeout: float = 60.0) -> None:
        """Start the server and wait until ``/healthz`` answers."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("FLEETWARD_HOME", "FLEETWARD_DATABASE_URL", "FLEETWARD_PUBLIC_URL")
        }
        cmd = [
            *_fleetward_command(),
            "--home",
            str(self.home),
            "serve",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--crl-interval",
            str(self.crl_interval),
        ]
        self.log_path = self.log_path or self.home.parent / f"server-{self.port}.log"
        with self.log_path.open("wb") as fh:
            self.proc = subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not answer /healthz in {timeout:.0f} s:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server and its worker processes so far (Linux)."""
        if self.proc is None:
            return 0.0
        total, pids = 0, [self.proc.pid]
        while pids:
            pid = pids.pop()
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
                for task in Path(f"/proc/{pid}/task").iterdir():
                    pids += [int(c) for c in (task / "children").read_text().split()]
        return total / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's output."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the server (uvicorn stops its workers), SIGKILL its group if it hangs."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            # The group is the one this process created for the server alone.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http_request(
    method: str,
    path: str,
    *,
    body: bytes = b"",
    content_type: str | None = None,
    token: str | None = None,
) -> bytes:
    """One pre-encoded HTTP/1.1 keep-alive request."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "Connection: keep-alive"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def json_request(method: str, path: str, payload: Any, *, token: str) -> bytes:
    """A pre-encoded JSON request with a bearer token."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return http_request(method, path, body=body, content_type="application/json", token=token)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            raise RuntimeError("chunked responses are not supported by this load client")
    return status, await reader.readexactly(length)


@dataclass
class LoadResult:
    """What a load run saw."""

    sent: int = 0
    elapsed: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    first_error: str = ""
    latencies: list[float] = field(default_factory=list)
    checked: Any = None

    @property
    def per_s(self) -> float:
        """Completed requests per second."""
        return self.sent / self.elapsed if self.elapsed else 0.0

    def percentile(self, p: float) -> float:
        """Latency percentile in milliseconds."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def _load(
    port: int,
    requests: Iterator[bytes],
    *,
    concurrency: int,
    deadline: float | None,
    on_body: Callable[[int, bytes], None] | None,
    timeout: float,
) -> LoadResult:
    result = LoadResult()

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        try:
            for raw in requests:  # one shared iterator: each request is sent once
                if deadline is not None and time.perf_counter() >= deadline:
                    return
                t0 = time.perf_counter()
                for attempt in (1, 2):
                    try:
                        writer.write(raw)
                        status, body = await asyncio.wait_for(_read_response(reader), timeout)
                        break
                    except (ConnectionError, asyncio.IncompleteReadError):
                        # The server closed an idle keep-alive connection: reconnect once.
                        writer.close()
                        if attempt == 2:
                            raise
                        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
                result.latencies.append(time.perf_counter() - t0)
                result.sent += 1
                result.statuses[status] += 1
                if status >= 300 and not result.first_error:
                    result.first_error = f"{status}: {body[:300]!r}"
                if on_body is not None:
                    on_body(status, body)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - start
    return result


def run_load(
    port: int,
    requests: Iterable[bytes],
    *,
    concurrency: int,
    duration: float | None = None,
    on_body: Callable[[int, bytes], None] | None = None,
    timeout: float = 300.0,
) -> LoadResult:
    """Send ``requests`` over ``concurrency`` keep-alive connections.

    Every request is sent once; with ``duration`` the run also stops after
    that many seconds (pass an endless iterator to load for a fixed time).
    """
    deadline = time.perf_counter() + duration if duration is not None else None
    return asyncio.run(
        _load(
            port,
            iter(requests),
            concurrency=concurrency,
            deadline=deadline,
            on_body=on_body,
            timeout=timeout,
        )
    )


def rate(fn: Callable[[int], object], *, seconds: float, min_calls: int = 50) -> float:
    """Calls per second of ``fn(i)`` in a loop on this thread for about ``seconds``."""
    i = 0
    start = time.perf_counter()
    deadline = start + seconds
    while i < min_calls or time.perf_counter() < deadline:
        fn(i)
        i += 1
    return i / (time.perf_counter() - start)


@dataclass
class Row:
    """One line of a results table."""

    figure: str
    value: str
    ratio: str = ""
    target: str = ""
    result: str = ""


def verdict(ok: bool) -> str:
    """PASS or FAIL, coloured."""
    return "[green]PASS[/green]" if ok else "[red]FAIL[/red]"


def print_table(title: str, rows: Sequence[Row], *, notes: Sequence[str] = ()) -> None:
    """Print a results table to stdout, then its notes, one per line."""
    table = Table(title=title, title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("target", justify="right")
    table.add_column("result", justify="center")
    for r in rows:
        table.add_row(r.figure, r.value, r.ratio, r.target, r.result)
    out.print(table)
    for note in notes:
        out.print(f"  {note}", soft_wrap=True)


def print_json(figures: dict[str, Any]) -> None:
    """The machine-readable figures: always the last line of stdout."""
    sys.stdout.flush()
    print(json.dumps(figures, sort_keys=True), flush=True)
