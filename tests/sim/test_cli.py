"""``fleetward sim run`` and the ``up --demo`` fleet."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetward.cli.main import app
from fleetward.errors import InvalidInputError
from fleetward.runtime.broker import BrokerRuntime
from fleetward.runtime.context import AppContext
from fleetward.runtime.workers import DemoFleet
from fleetward.sim import Broker
from tests.broker import synced, wait_for


def test_bad_input_is_one_clear_error(tmp_path: Path) -> None:
    runner = CliRunner()
    base = [
        "sim", "run", "--server", "http://127.0.0.1:9", "--device-server", "https://127.0.0.1:9",
        "--server-ca", str(tmp_path / "ca.pem"), "--dir", str(tmp_path),
    ]  # fmt: skip
    out = runner.invoke(app, [*base, "--devices", "3", "--env", "production"])
    assert isinstance(out.exception, InvalidInputError)
    assert out.exception.detail == "simulated devices never enroll in production"
    out = runner.invoke(app, [*base, "--devices", "3", "--offline", "2"])
    assert isinstance(out.exception, InvalidInputError) and "fraction" in out.exception.detail
    out = runner.invoke(app, [*base, "--devices", "3", "--processes", "5"])
    assert isinstance(out.exception, InvalidInputError) and "processes" in out.exception.detail


@pytest.mark.broker
@pytest.mark.slow
def test_sim_run_enrolls_connects_and_stops(
    live: str,
    live_device: str,
    service_ca: Path,
    admin_token: str,
    broker: BrokerRuntime,
    tmp_path: Path,
) -> None:
    runner = CliRunner()
    args = [
        "sim", "run", "--server", live, "--device-server", live_device,
        "--server-ca", str(service_ca), "--token", admin_token, "--devices", "4",
        "--env", "test", "--dir", str(tmp_path / "fleet"), "--duration", "1.5",
        "--interval", "0.5", "--tampered", "0.25",
    ]  # fmt: skip
    # The plugin learns new devices from its sync loop; the devices retry meanwhile.
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "enrolled 4/4" in out.output and "4 devices up" in out.output
    assert "connected" in out.output
    again = runner.invoke(app, [a for a in args if a != admin_token and a != "--token"])
    assert again.exit_code == 0, again.output  # enrolled already: no token needed
    synced(broker)


@pytest.mark.broker
@pytest.mark.slow
def test_up_demo_fleet(
    live: str,
    live_device: str,
    service_ca: Path,
    ctx: AppContext,
    broker: BrokerRuntime,
    tmp_path: Path,
) -> None:
    worker = DemoFleet(
        ctx.db,
        api_url=live,
        device_url=live_device,
        server_ca=service_ca,
        broker=Broker(host="127.0.0.1", port=broker.port, ca=broker.files.broker_ca),
        devices=3,
        directory=tmp_path / "demo",
    )
    demo = worker.demo
    worker.start()
    try:
        wait_for(
            lambda: demo.ready.is_set() or demo.error is not None,
            timeout=30, what="the demo fleet to connect",
        )  # fmt: skip
        assert demo.error is None, demo.error
        assert demo.fleet is not None
        snap = demo.fleet.snapshot()
        assert len(snap) == 3 and all(d["connected"] for d in snap)
    finally:
        worker.stop()
