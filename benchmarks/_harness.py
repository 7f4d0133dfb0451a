"""Shared plumbing of the fleetward benchmarks (not a benchmark itself).

Every benchmark keeps one contract, enforced here by :class:`Bench`:

1. **Sizes.** ``--smoke`` runs the CI size (``scripts/bench-smoke`` runs
   every benchmark that way); without it the full size. Explicit flags
   still win over either.
2. **Ceilings in the same run.** Reference rates are measured by the run
   that compares against them (:meth:`Bench.ceiling`), never copied from
   another run: absolute rates on a shared 2-core machine vary two- to
   three-fold between runs, ratios taken in one run do not.
3. **Targets are ratios** to a ceiling of the same run
   (:meth:`Bench.target`), each with the source of its number.
4. **The product's default intervals** unless a flag says otherwise, and
   the run prints which it used (:meth:`Bench.interval`,
   :meth:`Bench.server`).
5. **Errors are counted in every pass** (:meth:`Bench.count`); any error,
   or a crash, makes the run exit 1. A missed target is reported, and
   exits 2 only with ``--fail-on-target``.
6. **Output:** a readable table on stdout, then one JSON object as the
   last line of stdout (the same top-level keys for every benchmark);
   progress goes to stderr.

The rest is plumbing:

* :func:`new_installation` sets up a home exactly as ``fleetward init`` does.
* :class:`Server` runs ``fleetward serve`` on that home in a subprocess bound
  to 127.0.0.1, so the load generator never shares the server's GIL. It
  serves two planes: the operator plane (:attr:`Server.base`, plain HTTP,
  the REST API) and the device plane (:attr:`Server.device_base`, HTTPS with
  fleetward's service CA: EST, OCSP, CRLs, TUF, attestation, renewal);
  :meth:`Server.tls` is a client context for the device plane, with a
  device's certificate when one is given.
* :func:`run_load` is a small asyncio HTTP/1.1 keep-alive client. It sends
  pre-encoded requests over N connections and only reads the status line,
  the headers and ``Content-Length`` bytes back, so it costs a few tens of
  microseconds per request: on a 2-core machine the client must leave as
  much CPU as it can to the server it measures.
* :func:`rate` times a callable in a loop on one core (the raw ceilings).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from fleetward.config import Settings
from fleetward.runtime.context import AppContext
from fleetward.runtime.installation import initialise
from fleetward.tenancy import service as tenancy_service

HOST = "127.0.0.1"  # benchmarks never listen on or connect to anything else

# Progress goes to stderr so stdout holds only the tables and the final JSON line.
log = Console(stderr=True, highlight=False)
out = Console(highlight=False, width=140)


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 whose successor is unused too: the
    device plane of a benchmark server listens on ``port + 1`` (a CI run
    failed when only ``port`` had been checked: "address already in use")."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port: int = s.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as nxt:
                try:
                    nxt.bind((HOST, port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free pair of adjacent ports on 127.0.0.1")


def new_installation(
    tmp: Path, *, port: int, device_port: int | None = None
) -> tuple[AppContext, str]:
    """A fresh installation under ``tmp``: the operator plane on ``port``, the
    device plane (and the public URL in certificates) on ``device_port``
    (default ``port + 1``)."""
    device_port = device_port or port + 1
    settings = Settings(
        home=tmp / "home",
        database_url=f"sqlite:///{tmp / 'fw.db'}",
        public_url=f"https://{HOST}:{device_port}",
        operator_port=port,
        device_port=device_port,
    )
    ctx, token = initialise(settings, actor="bench")
    # These benchmarks issue software keys into production: that takes the
    # tenant's dangerous option (factory provisioning with attested keys does not).
    with ctx.db.session() as s:
        tenancy_service.set_allow_unattested(s, tenancy_service.authenticate(s, token), allow=True)
    return ctx, token


def fleetward_command() -> list[str]:
    """The ``fleetward`` console command of this virtualenv."""
    exe = Path(sys.executable).with_name("fleetward")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from fleetward.cli.main import main; main()"]


@functools.cache
def serve_defaults() -> dict[str, Any]:
    """The defaults of ``fleetward serve``'s options, read from the command itself."""
    import typer.main

    from fleetward.cli.main import app

    command = typer.main.get_command(app)
    serve = command.commands["serve"]  # type: ignore[attr-defined]
    return {p.name: p.default for p in serve.params}


@dataclass
class Server:
    """``fleetward serve`` on an initialised home, in its own process group."""

    home: Path
    port: int
    device_port: int = 0  # 0: port + 1 (what new_installation wrote into the certificates)
    workers: int = 1
    crl_interval: float | None = None  # None: ``fleetward serve``'s default
    env: dict[str, str] = field(default_factory=dict)  # extra FLEETWARD_* settings
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def crl_interval_used(self) -> float:
        """The CRL publication interval the server runs with."""
        if self.crl_interval is not None:
            return self.crl_interval
        return float(serve_defaults()["crl_interval"])

    def __post_init__(self) -> None:
        self.device_port = self.device_port or self.port + 1

    @property
    def base(self) -> str:
        """Base URL of the operator plane (REST API)."""
        return f"http://{HOST}:{self.port}"

    @property
    def device_base(self) -> str:
        """Base URL of the device plane (HTTPS)."""
        return f"https://{HOST}:{self.device_port}"

    @property
    def ca(self) -> Path:
        """The service CA the device plane's certificate chains to."""
        return self.home / "service-ca" / "ca.pem"

    def tls(self, *, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
        """A client context for the device plane (a device's certificate if given)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if cert is not None:
            context.load_cert_chain(cert, key)
        return context

    def start(self, *, timeout: float = 60.0) -> None:
        """Start the server and wait until ``/healthz`` answers."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("FLEETWARD_HOME", "FLEETWARD_DATABASE_URL", "FLEETWARD_PUBLIC_URL")
        } | self.env
        cmd = [
            *fleetward_command(),
            "--home",
            str(self.home),
            "serve",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--device-port",
            str(self.device_port),
            "--workers",
            str(self.workers),
        ]
        if self.crl_interval is not None:
            cmd += ["--crl-interval", str(self.crl_interval)]
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
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """One pre-encoded HTTP/1.1 keep-alive request."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "Connection: keep-alive"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    lines += [f"{name}: {value}" for name, value in headers]
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
    tls: ssl.SSLContext | None,
) -> LoadResult:
    result = LoadResult()

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(HOST, port, limit=1 << 20, ssl=tls)

    async def worker() -> None:
        reader, writer = await connect()
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
                        reader, writer = await connect()
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
    tls: ssl.SSLContext | None = None,
) -> LoadResult:
    """Send ``requests`` over ``concurrency`` keep-alive connections (TLS
    with ``tls``: the device plane, see :meth:`Server.tls`).

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
            tls=tls,
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


def given(**options: Any) -> dict[str, Any]:
    """The options that were set (not ``None``): pass them on, so what a flag
    does not set stays the product's default."""
    return {k: v for k, v in options.items() if v is not None}


@dataclass(frozen=True)
class Ceiling:
    """A reference rate (or time) measured in this run."""

    key: str
    label: str
    value: float
    unit: str


@dataclass(frozen=True)
class Target:
    """A goal for one figure, as a ratio to a ceiling measured in the same run."""

    key: str
    label: str
    value: float
    ceiling: Ceiling
    op: str  # ">=": the ratio must reach goal; "<=": it must stay under it
    goal: float
    source: str

    @property
    def ratio(self) -> float:
        """Figure / ceiling (both in the ceiling's unit)."""
        return self.value / self.ceiling.value if self.ceiling.value else float("inf")

    @property
    def met(self) -> bool:
        """Whether the ratio meets the goal."""
        return self.ratio >= self.goal if self.op == ">=" else self.ratio <= self.goal

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "value": _round(self.value),
            "ceiling": self.ceiling.key,
            "ratio": _round(self.ratio, 4),
            "goal": f"{self.op} {self.goal:g}",
            "met": self.met,
            "source": self.source,
        }


def _round(value: float, digits: int = 3) -> float:
    return round(value, digits) if value == value and abs(value) != float("inf") else value


@dataclass
class Bench:
    """One benchmark run: its arguments, ceilings, intervals, errors, targets and report."""

    name: str
    description: str
    parser: argparse.ArgumentParser = field(init=False)
    args: argparse.Namespace = field(init=False)
    size: str = "full"  # smoke | full | custom
    title: str = ""
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    ceilings: dict[str, Ceiling] = field(default_factory=dict)
    targets: dict[str, Target] = field(default_factory=dict)
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    passes: list[str] = field(default_factory=list)
    first_errors: dict[str, str] = field(default_factory=dict)
    crash: str = ""
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.parser = argparse.ArgumentParser(
            prog=f"benchmarks/{self.name}.py",
            description=self.description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    # -- arguments ----------------------------------------------------------

    def parse(self, argv: Sequence[str] | None, *, smoke: dict[str, Any]) -> argparse.Namespace:
        """Parse the arguments; ``--smoke`` switches the defaults to ``smoke``."""
        shown = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in smoke.items())
        self.parser.add_argument(
            "--smoke", action="store_true", help=f"the CI size: {shown} (explicit flags win)"
        )
        self.parser.add_argument(
            "--fail-on-target",
            action="store_true",
            help="exit 2 when a target is missed (errors always exit 1)",
        )
        defaults = vars(self.parser.parse_args([]))
        unknown = set(smoke) - set(defaults)
        if unknown:
            raise ValueError(f"smoke sizes for options that do not exist: {sorted(unknown)}")
        args = self.parser.parse_args(argv)
        if args.smoke:
            self.parser.set_defaults(**smoke)
            args = self.parser.parse_args(argv)
            self.size = "smoke"
        elif any(v != defaults[k] for k, v in vars(args).items()):
            self.size = "custom"
        self.args = args
        return args

    # -- what the run measured ----------------------------------------------

    def ceiling(self, key: str, value: float, *, unit: str, label: str) -> float:
        """Record a reference rate measured in this run; returns it."""
        self.ceilings[key] = Ceiling(key, label, value, unit)
        return value

    def ceiling_row(self, key: str, shown: str | None = None) -> Row:
        """A table row for a ceiling (ratio 1.00)."""
        c = self.ceilings[key]
        return Row(f"ceiling: {c.label}", shown or f"{c.value:,.4g} {c.unit}", "1.00")

    def interval(self, name: str, seconds: float, *, flag: str, override: float | None) -> float:
        """Record an interval the run uses: the product's default unless ``override``
        came from ``flag``. ``seconds`` is what the product object reports it uses."""
        if override is not None and abs(seconds - override) > 1e-9:
            raise RuntimeError(f"{name}: asked for {override} s, the product uses {seconds} s")
        source = f"{flag} {override:g}" if override is not None else "product default"
        self.intervals[name] = {"seconds": seconds, "source": source}
        return seconds

    def server(
        self,
        *,
        home: Path,
        port: int,
        workers: int = 1,
        crl_interval: float | None = None,
        device_port: int = 0,
        env: dict[str, str] | None = None,
    ) -> Server:
        """A :class:`Server` whose intervals are recorded (defaults unless given);
        ``env`` adds settings (printed with the intervals)."""
        server = Server(
            home=home,
            port=port,
            device_port=device_port,
            workers=workers,
            crl_interval=crl_interval,
            env=dict(env or {}),
        )
        for name, value in (env or {}).items():
            note = f"server setting (not a default): {name}={value}"
            if note not in self.notes:
                self.notes.append(note)
        self.interval(
            "CRL publication (fleetward serve)",
            server.crl_interval_used,
            flag="--crl-interval",
            override=crl_interval,
        )
        self.interval(
            "audit checkpoint (fleetward serve)",
            float(serve_defaults()["checkpoint_interval"]),
            flag="",
            override=None,
        )
        return server

    def workers(self, workers: Iterable[Any], *, overridden: dict[str, str] | None = None) -> None:
        """Record the interval of each runtime worker (``PeriodicWorker``) the run
        uses; ``overridden`` maps a worker name to the flag that set it."""
        overridden = overridden or {}
        for w in workers:
            self.intervals[f"{w.name} round"] = {
                "seconds": w.interval,
                "source": overridden.get(w.name, "product default"),
            }

    def count_worker_errors(self, pass_name: str, workers: Iterable[Any]) -> None:
        """Count the failed rounds of runtime workers (their health since they started)."""
        failed, first = 0, ""
        for w in workers:
            h = w.health()
            if h.last_error_at is not None:
                failed += max(1, h.failures)
                first = first or f"{h.name}: {h.last_error}"
        self.count(pass_name, failed, first=first)

    def count(self, pass_name: str, errors: int, *, first: str = "") -> None:
        """Record the errors of one pass (also when there were none)."""
        if pass_name not in self.passes:
            self.passes.append(pass_name)
        self.errors[pass_name] += errors
        if errors and first and pass_name not in self.first_errors:
            self.first_errors[pass_name] = first[:300]

    def check(self, pass_name: str, ok: bool, what: str) -> bool:
        """Count one error in ``pass_name`` unless ``ok``; returns ``ok``."""
        self.count(pass_name, 0 if ok else 1, first=what)
        return ok

    def target(
        self,
        key: str,
        *,
        label: str,
        value: float,
        ceiling: str,
        op: str,
        goal: float,
        source: str,
        shown: str,
    ) -> Row:
        """Record a target (``value / ceiling op goal``) and return its table row."""
        t = Target(key, label, value, self.ceilings[ceiling], op, goal, source)
        self.targets[key] = t
        return Row(label, shown, f"{t.ratio:.3g}", f"{op} {goal:g}", verdict(t.met))

    # -- running and reporting ----------------------------------------------

    @property
    def error_total(self) -> int:
        """Errors over every pass."""
        return sum(self.errors.values())

    def run(self, body: Callable[[], None]) -> int:
        """Run the benchmark's body, then report; returns the exit code."""
        try:
            body()
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # reported in the JSON line and the exit code
            self.crash = f"{type(exc).__name__}: {exc}"[:1000]
            log.print(f"[red]{self.name}: crashed[/red]")
            traceback.print_exc(file=sys.stderr)
        return self.report()

    def report(self) -> int:
        """Print the table, notes, intervals and errors, then the JSON line."""
        seconds = time.perf_counter() - self.started
        table = Table(title=self.title or self.name, title_justify="left")
        for name, justify in (
            ("figure", "left"),
            ("value", "right"),
            ("ratio", "right"),
            ("target", "right"),
            ("result", "center"),
        ):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for r in self.rows:
            table.add_row(r.figure, r.value, r.ratio, r.target, r.result)
        out.print(table)
        for extra in self.tables:
            out.print(extra)
        for note in self.notes:
            out.print(f"  {note}", soft_wrap=True)
        out.print(
            "  intervals: "
            + (
                "; ".join(
                    f"{k} {v['seconds']:g} s ({v['source']})" for k, v in self.intervals.items()
                )
                or "none"
            ),
            soft_wrap=True,
        )
        for t in self.targets.values():
            out.print(
                f"  target {t.key}: {t.ratio:.3g} {t.op} {t.goal:g} of {t.ceiling.key} "
                f"({'met' if t.met else 'MISSED'}; {t.source})",
                soft_wrap=True,
            )
        errors = ", ".join(f"{p} {self.errors[p]}" for p in self.passes) or "no pass ran"
        out.print(f"  errors per pass: {errors}", soft_wrap=True)
        for p, first in self.first_errors.items():
            out.print(f"  first error in {p}: {first}", soft_wrap=True)
        if self.crash:
            out.print(f"  [red]crashed: {self.crash}[/red]", soft_wrap=True)
        ok = not self.crash and self.error_total == 0 and bool(self.passes)
        met = all(t.met for t in self.targets.values())
        print_json(
            {
                "benchmark": self.name,
                "size": self.size,
                "ok": ok,
                "crashed": self.crash or None,
                "error_total": self.error_total,
                "errors": {p: self.errors[p] for p in self.passes},
                "first_errors": self.first_errors,
                "targets_met": met,
                "targets": {k: t.as_dict() for k, t in self.targets.items()},
                "ceilings": {
                    k: {"value": _round(c.value, 4), "unit": c.unit}
                    for k, c in self.ceilings.items()
                },
                "intervals": self.intervals,
                "seconds": round(seconds, 1),
                "args": {
                    k: v for k, v in vars(getattr(self, "args", argparse.Namespace())).items()
                },
                "figures": self.figures,
            }
        )
        if not ok:
            return 1
        return 2 if self.args.fail_on_target and not met else 0


def print_json(figures: dict[str, Any]) -> None:
    """The machine-readable figures: always the last line of stdout."""
    sys.stdout.flush()
    print(json.dumps(figures, sort_keys=True, default=str), flush=True)
