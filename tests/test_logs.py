"""Logging configured once: text for people, JSON lines for shippers, each
line naming its thread and, inside a request, the request id."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from fleetward import logs
from fleetward.errors import InvalidInputError


@pytest.fixture
def configured() -> Iterator[tuple[io.StringIO, list[logging.Handler]]]:
    """A place to configure logging into; the root logger is restored after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    installed: list[logging.Handler] = []
    yield out, installed
    for handler in installed:
        root.removeHandler(handler)
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("uvicorn.access").disabled = False
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def _lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_json_lines_carry_level_logger_thread_request_and_extras(
    configured: tuple[io.StringIO, list[logging.Handler]],
) -> None:
    out, installed = configured
    installed.append(logs.configure(level="INFO", fmt="json", stream=out))
    log = logging.getLogger("fleetward.worker.detection")

    def work() -> None:
        log.info("round took %d ms", 12, extra={"devices": 3})

    thread = threading.Thread(target=work, name="fw-detection")
    thread.start()
    thread.join()
    token = logs.request_id.set("0123456789abcdef")
    try:
        log.warning('device "d-1\nforged" refused')
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        logs.request_id.reset(token)
    log.debug("not at this level")

    first, second, third = (json.loads(line) for line in _lines(out))
    assert first["message"] == "round took 12 ms"
    assert (first["level"], first["logger"]) == ("info", "fleetward.worker.detection")
    assert first["thread"] == "fw-detection"
    assert first["devices"] == 3
    assert "request_id" not in first
    assert first["ts"].endswith("Z")
    assert second["request_id"] == "0123456789abcdef"
    assert second["message"] == 'device "d-1\nforged" refused'  # one line, escaped by JSON
    assert "ValueError: boom" in third["exc"]


def test_text_lines_escape_what_could_forge_a_line(
    configured: tuple[io.StringIO, list[logging.Handler]],
) -> None:
    out, installed = configured
    installed.append(logs.configure(level="debug", fmt="text", stream=out))
    logging.getLogger("fleetward.test").info("device %s", "d-1\n2025-01-01 INFO forged\x1b[2J")
    [line] = _lines(out)
    assert "[MainThread] - device d-1\\n2025-01-01 INFO forged\\x1b[2J" in line


def test_configure_replaces_its_own_handler_only(
    configured: tuple[io.StringIO, list[logging.Handler]],
) -> None:
    out, installed = configured
    other = logging.NullHandler()
    logging.getLogger().addHandler(other)
    installed.append(other)
    installed.append(logs.configure(fmt="text", stream=io.StringIO()))
    installed.append(logs.configure(fmt="json", stream=out))
    mine = [h for h in logging.getLogger().handlers if h.get_name() == "fleetward"]
    assert len(mine) == 1 and other in logging.getLogger().handlers
    logging.getLogger("fleetward.x").warning("once")
    assert json.loads(out.getvalue())["message"] == "once"


@pytest.mark.parametrize(("level", "fmt"), [("verbose", "text"), ("info", "xml")])
def test_unknown_level_or_format_is_refused(level: str, fmt: str) -> None:
    with pytest.raises(InvalidInputError):
        logs.configure(level=level, fmt=fmt, stream=io.StringIO())
