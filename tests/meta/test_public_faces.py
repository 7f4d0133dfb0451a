"""Public faces: each domain is used through its ``__init__``, never its tables.

The import contracts in ``pyproject.toml`` (run by ``scripts/check``) keep
other domains from importing a domain's modules, tables or ``_private``
modules. A face may still hand out the ORM class its services return (a
``Device``, a ``Tenant``) as a type; these tests hold what the contracts
cannot see: that nobody outside the owning domain builds SQL on that class
(``select(Device)``, ``Device.tenant_id == ...``, ``session.get(Tenant, ...)``,
``Event(...)``).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from types import ModuleType

import pytest

from fleetward.store.db import Base

SRC = Path(__file__).resolve().parents[2] / "src" / "fleetward"
DOMAINS = (
    "agent",
    "attestation",
    "audit",
    "comms",
    "detection",
    "identity",
    "ota",
    "provisioning",
    "response",
    "sim",
    "telemetry",
    "tenancy",
    "trustmap",
    "vulns",
)
# Calls that take a mapped class to read or write its table.
SQL_CALLS = {
    "add",
    "delete",
    "exists",
    "get",
    "get_one",
    "insert",
    "join",
    "merge",
    "outerjoin",
    "query",
    "select",
    "select_from",
    "update",
}
# Where the schema is assembled: every table, on purpose.
SCHEMA = {"runtime/schema.py"}
# cli/ and api/routes/ are being reworked for issue 13 item 8; their owner
# moves these reads to identity.batches_of, tenancy.list_tenants and
# response.list_runs when that lands. Named, so no other read can join them.
PENDING: set[tuple[str, str]] = set()


def _mapped(obj: object) -> str | None:
    """The domain that owns ``obj`` when it is a mapped class, else None."""
    if isinstance(obj, type) and issubclass(obj, Base) and obj is not Base:
        parts = obj.__module__.split(".")
        return parts[1] if len(parts) > 2 else None
    return None


class _Names(ast.NodeVisitor):
    """What each imported name of one module is bound to."""

    def __init__(self) -> None:
        self.bound: dict[str, object] = {}

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module or not node.module.startswith("fleetward"):
            return
        module = importlib.import_module(node.module)
        for alias in node.names:
            name = alias.asname or alias.name
            value = getattr(module, alias.name, None)
            if value is None:  # a submodule not imported by its package
                value = importlib.import_module(f"{node.module}.{alias.name}")
            self.bound[name] = value

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.startswith("fleetward") and alias.asname:
                self.bound[alias.asname] = importlib.import_module(alias.name)


def _resolve(node: ast.expr, bound: dict[str, object]) -> object:
    if isinstance(node, ast.Name):
        return bound.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, bound)
        if isinstance(owner, ModuleType):
            return getattr(owner, node.attr, None)
    return None


def table_uses(source: str, rel: str) -> list[tuple[int, str, str]]:
    """``(line, class, domain)`` of each use of another domain's mapped class
    in SQL by the module at ``rel`` (its path under ``src/fleetward``)."""
    own = rel.split("/")[0].removesuffix(".py")
    tree = ast.parse(source)
    names = _Names()
    names.visit(tree)
    found: list[tuple[int, str, str]] = []

    def foreign(node: ast.expr) -> tuple[str, str] | None:
        value = _resolve(node, names.bound)
        domain = _mapped(value)
        if domain is None or domain == own:
            return None
        assert isinstance(value, type)
        return value.__name__, domain

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (hit := foreign(node.value)):
            found.append((node.lineno, *hit))  # Device.tenant_id, a column
        elif isinstance(node, ast.Call):
            if hit := foreign(node.func):
                found.append((node.lineno, *hit))  # Event(...), a new row
            called = node.func.attr if isinstance(node.func, ast.Attribute) else None
            if isinstance(node.func, ast.Name):
                called = node.func.id
            if called in SQL_CALLS:
                found.extend((node.lineno, *h) for a in node.args if (h := foreign(a)))
    return [f for f in found if rel not in SCHEMA and (rel, f[1]) not in PENDING]


def test_no_domain_builds_sql_on_another_domains_tables() -> None:
    uses = {
        f"{p.relative_to(SRC)}:{line}": f"{cls} ({domain})"
        for p in sorted(SRC.rglob("*.py"))
        if "migrations" not in p.parts
        for line, cls, domain in table_uses(
            p.read_text(encoding="utf-8"), p.relative_to(SRC).as_posix()
        )
    }
    assert not uses, f"read these through the owning domain's face instead: {uses}"


PROBE = """
from sqlalchemy import select
from fleetward import identity
from fleetward.tenancy import Tenant
from fleetward.telemetry.models import Event
from fleetward.comms.models import CommsPolicy

def f(session, name, device: identity.Device):
    session.get(Tenant, 1)
    Event(type="x")
    select(CommsPolicy)
    return select(identity.Device.id).where(Tenant.name == name)
"""


def test_the_check_sees_a_table_read() -> None:
    """The scan finds each shape of a foreign table read, and lets a domain
    use its own tables and another's as a type (it cannot pass by seeing
    nothing)."""
    hits = {(line, cls) for line, cls, _ in table_uses(PROBE, "comms/probe.py")}
    assert hits == {(9, "Tenant"), (10, "Event"), (12, "Device"), (12, "Tenant")}


@pytest.mark.parametrize("domain", DOMAINS)
def test_each_face_exports_what_it_names(domain: str) -> None:
    face = importlib.import_module(f"fleetward.{domain}")
    exported = getattr(face, "__all__", None)
    assert exported, f"fleetward.{domain} names its public face in __all__"
    missing = [name for name in exported if not hasattr(face, name)]
    assert not missing, f"fleetward.{domain}.__all__ names what it lacks: {missing}"
    private = [name for name in exported if name.startswith("_")]
    assert not private, f"fleetward.{domain} exports private names: {private}"
