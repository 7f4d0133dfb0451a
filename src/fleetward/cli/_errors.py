"""Bad data ends a ``fleetward`` command with one line on stderr and exit code 1.

Every command runs inside :class:`CleanErrors`, the root command group. It
wraps what bad input raises in a foreign type into the one error tree
(``raise InvalidInputError(...) from exc``, the edge rule of
``fleetward.errors``):

- a file the user named that cannot be read or written (``OSError``:
  missing, a directory, no permission);
- content that does not parse: bad JSON, YAML, PEM or DER, text that is not
  UTF-8 (``ValueError`` and its subclasses, ``yaml.YAMLError``);
- a number past what the database stores (``OverflowError`` from sqlite3,
  ``DataError`` from psycopg).

:func:`fleetward.cli.main.main` prints every
:class:`~fleetward.errors.FleetwardError` as one ``error: ...`` line
(:func:`describe`) and exits 1. Under ``CliRunner`` the error is the
result's ``exception``, as for any other refusal. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

from typing import Any

import yaml
from sqlalchemy.exc import DataError
from typer.core import TyperGroup

from fleetward.errors import FleetwardError, InvalidInputError

__all__ = ["BAD_DATA", "MAX_ERROR_CHARS", "CleanErrors", "describe"]

MAX_ERROR_CHARS = 300  # one line: a parser's message can quote a whole document

BAD_DATA: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    OverflowError,
    yaml.YAMLError,
    DataError,
)
"""What a command's input can raise outside the error tree."""


def describe(exc: BaseException) -> str:
    """One line that says what was wrong with the input (never a traceback)."""
    if isinstance(exc, FleetwardError):
        text = exc.detail
    elif isinstance(exc, OSError) and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror or exc}"
    elif isinstance(exc, yaml.YAMLError):
        text = f"not valid YAML: {exc}"
    elif isinstance(exc, OverflowError | DataError):
        text = "a number or value is out of range for the database"
    else:
        text = str(exc) or type(exc).__name__
    line = " ".join(text.split())
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."


class CleanErrors(TyperGroup):
    """The root group: runs the command, and turns bad data into the error tree."""

    def invoke(self, ctx: Any) -> Any:  # Any: typer's vendored click Context is private
        """Run the command; see the module docstring for what is wrapped."""
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise  # click handles a closed stdout itself
        except BAD_DATA as exc:
            raise InvalidInputError(describe(exc)) from exc
