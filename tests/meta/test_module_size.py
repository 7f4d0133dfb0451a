"""Modules a person can hold: none under src/ passes 600 lines."""

from __future__ import annotations

from pathlib import Path

LIMIT = 600
SRC = Path(__file__).resolve().parents[2] / "src" / "fleetward"


def test_no_module_passes_600_lines() -> None:
    too_long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if "migrations" not in p.parts
        and (n := len(p.read_text(encoding="utf-8").splitlines())) > LIMIT
    }
    assert not too_long, f"split these along the domain: {too_long}"


def test_the_check_sees_the_tree() -> None:
    assert len(list(SRC.rglob("*.py"))) > 100
