"""Logging, configured once per process.

:func:`configure` installs one handler on the root logger, so fleetward's
loggers (``fleetward.*``), uvicorn's and the libraries' all write the same
way, in one of two formats:

* ``text`` (the default): ``time level logger [thread] request-id message``,
  for people. Line breaks and other control characters in a message are
  escaped, so a value an attacker chose (a device id, a header) cannot forge
  a second log line.
* ``json``: one JSON object per line, for log shippers (Loki, Elasticsearch,
  Cloud Logging): ``ts`` (RFC 3339, UTC), ``level``, ``logger``, ``thread``,
  ``message``, ``request_id`` when there is one, ``exc`` with the traceback,
  and the ``extra`` fields of the call (``log.info("...", extra={...})``).

Every line names its thread: the runtime's workers run in threads named
after them (``fw-<worker>``), so a line says which worker wrote it. Lines
written while an HTTP request is handled carry that request's id
(:data:`request_id`, set by ``fleetward.api.access``), as does its
access-log line (logger ``fleetward.access``).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from typing import IO, Any

from fleetward.errors import InvalidInputError

__all__ = ["FORMATS", "LEVELS", "JsonFormatter", "TextFormatter", "configure", "request_id"]

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("text", "json")

# The id of the HTTP request this task is handling ("" outside one).
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("fleetward_request_id", default="")

# Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "request_id", "taskName"}
    | {"color_message"}  # uvicorn's message with terminal colours
)
_HANDLER_NAME = "fleetward"
_URL_LOGGERS = ("httpx", "httpcore")
# Characters that would let a message start a new line or rewrite the terminal.
_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F) if i != 0x09}
_ESCAPES |= {0x0A: "\\n", 0x0D: "\\r"}


class _RequestId(logging.Filter):
    """Adds ``record.request_id`` from the context (a filter on the handler,
    so records of every logger get it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = request_id.get()
        return True


class TextFormatter(logging.Formatter):
    """``2025-01-01T12:00:00.000Z INFO fleetward.x [fw-detection] rid message``."""

    def format(self, record: logging.LogRecord) -> str:
        when = _timestamp(record.created)
        rid = getattr(record, "request_id", "") or "-"
        message = record.getMessage().translate(_ESCAPES)
        line = f"{when} {record.levelname} {record.name} [{record.threadName}] {rid} {message}"
        extra = _extra(record)
        if extra:
            line += " " + " ".join(f"{k}={_scalar(v)}" for k, v in extra.items())
        if record.exc_info:
            # Tracebacks keep their lines: they are ours, not an attacker's.
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", "")
        if rid:
            out["request_id"] = rid
        for key, value in _extra(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure(
    *, level: str = "info", fmt: str = "text", stream: IO[str] | None = None
) -> logging.Handler:
    """Send every log record at ``level`` or above to ``stream`` (stderr) in ``fmt``.

    Calling it again replaces the handler it installed before (the last call
    wins); handlers others installed on the root logger are left alone.

    Args:
        level: One of :data:`LEVELS` (any case).
        fmt: ``text`` or ``json``.
        stream: Where lines go; standard error by default.

    Returns:
        The installed handler.

    Raises:
        InvalidInputError: an unknown level or format.
    """
    name = level.strip().lower()
    if name not in LEVELS:
        raise InvalidInputError(f"log level {level!r}: one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise InvalidInputError(f"log format {fmt!r}: one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_RequestId())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(name.upper())
    # uvicorn's own access log has no request id; fleetward.api.access writes ours.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every URL it calls, query string included, at INFO: webhook
    # and device URLs may carry credentials there. Only when debugging.
    for chatty in _URL_LOGGERS:
        logging.getLogger(chatty).setLevel(logging.DEBUG if name == "debug" else logging.WARNING)
    return handler


def _timestamp(created: float) -> str:
    return (
        dt.datetime.fromtimestamp(created, tz=dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _scalar(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = text.translate(_ESCAPES)
    return json.dumps(text) if (" " in text or not text) else text
