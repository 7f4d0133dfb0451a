"""SBOM parsing: CycloneDX and SPDX JSON to :class:`~.records.ParsedSbom` (pure).

An uploaded SBOM is untrusted bytes. :func:`parse_sbom` takes five steps:

1. **Size**: over :data:`MAX_SBOM_BYTES` (the release upload's limit) is
   refused with ``PayloadTooLargeError`` before anything is parsed.
2. **JSON**: a UTF-8 JSON object nested at most :data:`MAX_JSON_DEPTH` deep (so
   neither the decoder nor the validator runs out of stack); no ``NaN``.
3. **Format** (:func:`looks_like_sbom`): ``bomFormat: "CycloneDX"`` with
   ``specVersion`` 1.4, 1.5 or 1.6, or ``spdxVersion: "SPDX-2.3"``; anything
   else (CycloneDX 1.2/1.3, SPDX 2.2 ...) is refused naming what is accepted.
4. **Schema**: CycloneDX against cyclonedx-python-lib's ``JsonStrictValidator``
   schema for its version (bundled, ``$ref``s resolved locally: no network);
   SPDX by spdx-tools' JSON-like-dict parser and ``validate_full_spdx_document``.
   A failure refuses the whole document: a half-valid SBOM is no inventory.
   Two costs of the validator are bounded (:func:`_validate_cyclonedx`):
   ``uniqueItems`` is checked by hashing for big arrays, and URLs
   (``iri-reference``) get a character check instead of an Earley parser.
5. **Components**, each a :class:`~.records.Component`:

   - CycloneDX ``components[]``, nested ones flattened in document order down
     to :data:`MAX_COMPONENT_DEPTH`. ``metadata.component`` is the release
     itself, not a dependency, and is left out; what is nested in it is kept.
   - SPDX ``packages[]`` with ``purl`` and ``cpe23Type`` (or ``cpe22Type``,
     converted to 2.3) external references, the first usable of each. If the
     document ``DESCRIBES`` exactly one of several packages, that one is the
     release itself and is left out.
   - The purl is canonicalised by packageurl-python; :data:`PURL_ECOSYSTEMS`
     gives the OSV ecosystem, and the package is spelled as OSV spells it (npm
     ``@scope/name``, Maven ``group:artifact``, Go the module path). The
     version is the purl's, else the component's.

Per component (``ParsedSbom.skipped`` has one reason per component left out):

- A purl type OSV does not know (``generic``, ``opkg``, ``github`` ...) keeps
  the component with ``ecosystem``/``package`` None: it can match by CPE. No
  purl and no CPE keeps it too: it is inventory, it just never matches.
- A malformed purl or CPE is dropped; the component stays if the other
  identifier is usable and is left out otherwise.
- A name, version, purl, CPE or bom-ref over its limit (:data:`MAX_NAME_LENGTH`
  ...) or holding NUL or a lone surrogate (JSON escapes can spell them, UTF-8
  storage refuses them) leaves the component out.
- Components past :data:`MAX_COMPONENTS` are left out with one reason for all;
  exact duplicates are kept once.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from jsonschema import Draft7Validator, FormatChecker  # type: ignore[import-untyped]
from packageurl import PackageURL
from spdx_tools.spdx.model.relationship import RelationshipType
from spdx_tools.spdx.parser.error import SPDXParsingError
from spdx_tools.spdx.parser.jsonlikedict.json_like_dict_parser import JsonLikeDictParser
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from fleetward.errors import InvalidInputError, PayloadTooLargeError
from fleetward.ota.release import MAX_SBOM_BYTES
from fleetward.vulns.records import Component, ParsedSbom

# fmt: off
__all__ = [
    "CYCLONEDX_VERSIONS", "MAX_BOM_REF_LENGTH", "MAX_COMPONENTS", "MAX_COMPONENT_DEPTH",
    "MAX_CPE_LENGTH", "MAX_JSON_DEPTH", "MAX_NAME_LENGTH", "MAX_PURL_LENGTH", "MAX_SBOM_BYTES",
    "MAX_UNIQUE_PAIRS", "MAX_VERSION_LENGTH", "PURL_ECOSYSTEMS", "SPDX_VERSIONS",
    "VALIDATION_CHUNK", "looks_like_sbom", "parse_sbom", "sbom_digest",
]
# fmt: on

# Limits on untrusted input: they bound the work and the rows one SBOM causes.
# Components kept per SBOM: a full Yocto image with SDK has a few thousand.
MAX_COMPONENTS: Final = 50_000
# Levels of nested CycloneDX components (a top-level component is level 1).
MAX_COMPONENT_DEPTH: Final = 16
# Nesting of the JSON document itself. It keeps the decoder and the
# (recursive) schema validator well inside Python's stack; a component level
# costs two JSON levels, so this leaves room for MAX_COMPONENT_DEPTH.
MAX_JSON_DEPTH: Final = 48
# Longest field kept. npm names are at most 214 characters and Go module paths
# rarely pass 200; Debian versions and purls with qualifiers run longer.
MAX_NAME_LENGTH: Final = 512
MAX_VERSION_LENGTH: Final = 256
MAX_PURL_LENGTH: Final = 2048
MAX_CPE_LENGTH: Final = 512
MAX_BOM_REF_LENGTH: Final = 2048
# jsonschema checks "uniqueItems" by comparing every pair of items (10,000
# components: 70 s). Top-level arrays and component trees are validated in
# chunks of this many items (uniqueness across chunks is checked by hashing);
# the pairs left to compare in other arrays (services, tools ...) are limited.
VALIDATION_CHUNK: Final = 16
MAX_UNIQUE_PAIRS: Final = 200_000

CYCLONEDX_VERSIONS: Final = {v: SchemaVersion.from_version(v) for v in ("1.4", "1.5", "1.6")}
SPDX_VERSIONS: Final = ("SPDX-2.3",)
_ACCEPTED = "CycloneDX JSON (specVersion 1.4, 1.5 or 1.6) or SPDX JSON (spdxVersion SPDX-2.3)"

# (purl type, purl namespace) -> OSV ecosystem, as osv.dev maps them
# (osv/purl_helpers.py). A None namespace means the type alone decides and the
# namespace, if any, is part of the package name. Types OSV has no ecosystem
# for are absent: "generic", "github" (OSV's GIT ranges need commits, not
# versions), "opkg"/OpenWrt (no OSV ecosystem), rpm of other distributions.
# fmt: off
PURL_ECOSYSTEMS: Final[Mapping[tuple[str, str | None], str]] = {
    ("pypi", None): "PyPI", ("npm", None): "npm", ("maven", None): "Maven",
    ("golang", None): "Go", ("cargo", None): "crates.io", ("gem", None): "RubyGems",
    ("nuget", None): "NuGet", ("composer", None): "Packagist", ("hex", None): "Hex",
    ("pub", None): "Pub", ("swift", None): "SwiftURL", ("conan", None): "ConanCenter",
    ("cran", None): "CRAN", ("hackage", None): "Hackage", ("bitnami", None): "Bitnami",
    ("deb", "debian"): "Debian", ("deb", "ubuntu"): "Ubuntu",
    ("apk", "alpine"): "Alpine", ("apk", "wolfi"): "Wolfi", ("apk", "chainguard"): "Chainguard",
    ("rpm", "redhat"): "Red Hat", ("rpm", "almalinux"): "AlmaLinux",
    ("rpm", "rocky-linux"): "Rocky Linux", ("rpm", "opensuse"): "openSUSE",
    ("rpm", "suse"): "SUSE", ("rpm", "mageia"): "Mageia", ("rpm", "openeuler"): "openEuler",
}
# fmt: on
# Types whose namespace joins the name as OSV spells packages, and with what.
_NAMESPACE_JOIN: Final[Mapping[str, str]] = dict.fromkeys(
    ("npm", "golang", "composer", "hex", "swift"), "/"
) | {"maven": ":"}

# The schema's "iri-reference" format (external reference URLs) is checked by
# an Earley parser costing 1-50 ms per string: 10,000 components with two
# external references took minutes. It is replaced by a check for characters no
# IRI may hold (RFC 3987); every other format is checked as the library does.
_IRI_CHARS: Final = re.compile(r'[^\x00-\x20\x7f-\x9f<>"{}|\\^`]*')
_FORMAT_CHECKER: Final = FormatChecker(formats=())
_FORMAT_CHECKER.checkers = {
    name: check
    for name, check in Draft7Validator.FORMAT_CHECKER.checkers.items()
    if name != "iri-reference"
}


@_FORMAT_CHECKER.checks("iri-reference")  # type: ignore[untyped-decorator]
def _is_iri_reference(instance: object) -> bool:
    return not isinstance(instance, str) or _IRI_CHARS.fullmatch(instance) is not None


# Keys whose arrays the CycloneDX 1.4-1.6 schemas mark "uniqueItems".
# fmt: off
_UNIQUE_KEYS: Final = frozenset((
    "affects", "annotations", "assemblies", "components", "compositions", "conditions",
    "dependencies", "dependsOn", "environmentVars", "formulation", "inputs", "outputs",
    "parameters", "provides", "resourceReferences", "runtimeTopology", "services", "steps",
    "subjects", "taskDependencies", "tasks", "tools", "vulnerabilities", "workflows",
    "workspaces",
))
# fmt: on

# One validator per schema version; building one loads its schema files.
_VALIDATORS: dict[SchemaVersion, Any] = {}


def _validator(version: SchemaVersion) -> Any:
    """The library's strict validator for ``version``, with the format checker above.

    ``JsonStrictValidator._validator`` is the jsonschema validator the library
    builds (its schema and a registry of its bundled ``$ref`` targets: no
    network). It is private: if a release renames it, this fails loudly.
    """
    validator = _VALIDATORS.get(version)
    if validator is None:
        strict = JsonStrictValidator(version)._validator
        validator = _VALIDATORS.setdefault(version, strict.evolve(format_checker=_FORMAT_CHECKER))
    return validator


def sbom_digest(data: bytes) -> str:
    """The SHA-256 of the SBOM's bytes, lowercase hex (what a release records)."""
    return hashlib.sha256(data).hexdigest()


def looks_like_sbom(data: bytes) -> str:
    """Which SBOM format ``data`` is, without schema validation.

    Args:
        data: the uploaded bytes.

    Returns:
        ``"cyclonedx"`` or ``"spdx"``.

    Raises:
        PayloadTooLargeError: over :data:`MAX_SBOM_BYTES`.
        InvalidInputError: not JSON, or not a CycloneDX/SPDX version fleetward reads.
    """
    return _detect(_load(data))[0]


def parse_sbom(data: bytes) -> ParsedSbom:
    """Parse and validate a CycloneDX or SPDX JSON SBOM (see the module docstring).

    Args:
        data: the uploaded bytes.

    Returns:
        The format, its version, the components kept and why others were left out.

    Raises:
        PayloadTooLargeError: over :data:`MAX_SBOM_BYTES`.
        InvalidInputError: not JSON, not an accepted format or version, or
            schema-invalid.
    """
    doc = _load(data)
    fmt, version = _detect(doc)
    drafts: Iterable[_Draft]
    if fmt == "cyclonedx":
        _validate_cyclonedx(doc, CYCLONEDX_VERSIONS[version])
        drafts = _cyclonedx_drafts(doc)
    else:
        drafts = _spdx_drafts(doc)
    components, skipped = _build(drafts)
    return ParsedSbom(format=fmt, spec_version=version, components=components, skipped=skipped)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _load(data: bytes) -> dict[str, Any]:
    """Decode the bytes as a JSON object, within the size and depth limits."""
    if len(data) > MAX_SBOM_BYTES:
        raise PayloadTooLargeError(f"an SBOM is limited to {MAX_SBOM_BYTES} bytes")
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidInputError(f"SBOM is not UTF-8 JSON; expected {_ACCEPTED}") from exc
    if not isinstance(doc, dict):
        raise InvalidInputError(f"SBOM is not a JSON object; expected {_ACCEPTED}")
    if _depth(doc) > MAX_JSON_DEPTH:
        raise InvalidInputError(f"SBOM JSON is nested deeper than {MAX_JSON_DEPTH} levels")
    return doc


def _depth(doc: object) -> int:
    """Nesting depth of a decoded JSON value (iterative; stops past the limit)."""
    deepest, stack = 0, [(doc, 1)]
    while stack and deepest <= MAX_JSON_DEPTH:
        value, level = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, level)
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, level + 1) for child in children)
    return deepest


def _detect(doc: Mapping[str, Any]) -> tuple[str, str]:
    """(format, spec version) of a decoded document, or a refusal naming what is accepted."""
    known: Iterable[str]
    if doc.get("bomFormat") == "CycloneDX":
        label, version, known = "CycloneDX specVersion", doc.get("specVersion"), CYCLONEDX_VERSIONS
        fmt = "cyclonedx"
    elif "spdxVersion" in doc:
        fmt, label, version, known = "spdx", "SPDX version", doc["spdxVersion"], SPDX_VERSIONS
    else:
        raise InvalidInputError(f"not a recognised SBOM; expected {_ACCEPTED}")
    if isinstance(version, str) and version in known:
        return fmt, version
    raise InvalidInputError(f"{label} {repr(version)[:32]} is not supported; expected {_ACCEPTED}")


def _validate_cyclonedx(doc: Mapping[str, Any], version: SchemaVersion) -> None:
    """Validate against the strict schema, in chunks (see :data:`VALIDATION_CHUNK`).

    Pieces are validated as documents of their own: a skeleton (all but the
    top-level arrays and component trees), then top-level array items and
    components without their nested ``components``, :data:`VALIDATION_CHUNK`
    at a time. ``uniqueItems`` of the arrays cut up is checked by hashing
    canonical JSON (``1`` and ``1.0`` differ here, not in the schema).
    """
    pieces: list[tuple[str, str, Any]] = []  # (array key, original path, item)
    handled: list[tuple[str, list[Any]]] = []  # arrays cut up: their uniqueness is ours
    skeleton = dict(doc)
    metadata = doc.get("metadata")
    top = metadata.get("component") if isinstance(metadata, dict) else None
    roots: list[tuple[str, list[Any]]] = []
    if isinstance(top, dict) and isinstance(top.get("components"), list):
        skeleton["metadata"] = {**doc["metadata"], "component": _without_children(top)}
        roots.append(("metadata/component/components", top["components"]))
    for key, value in doc.items():
        if not isinstance(value, list) or not value:
            continue
        del skeleton[key]
        if key == "components":
            roots.append(("components", value))
        else:
            handled.append((key, value))
            pieces.extend((key, f"{key}/{i}", item) for i, item in enumerate(value))
    stack = list(reversed(roots))
    while stack:
        path, children = stack.pop()
        handled.append((path, children))
        for i, comp in enumerate(children):
            pieces.append(("components", f"{path}/{i}", _without_children(comp)))
            if isinstance(comp, dict) and isinstance(comp.get("components"), list):
                stack.append((f"{path}/{i}/components", comp["components"]))
    _check_unique_pairs(doc, {id(array) for _, array in handled})
    validator = _validator(version)
    header = {"bomFormat": "CycloneDX", "specVersion": doc["specVersion"]}
    _validate_piece(validator, version, skeleton, None, [])
    for start in range(0, len(pieces), VALIDATION_CHUNK):
        chunk = pieces[start : start + VALIDATION_CHUNK]
        # One document per source array: a chunk may straddle arrays, and items
        # of different arrays may be equal (uniqueItems is per array).
        for key, parent in dict.fromkeys((k, p.rsplit("/", 1)[0]) for k, p, _ in chunk):
            items = [(p, item) for k, p, item in chunk if (k, p.rsplit("/", 1)[0]) == (key, parent)]
            piece = {**header, key: [item for _, item in items]}
            _validate_piece(validator, version, piece, key, [p for p, _ in items])
    for path, array in handled:
        seen: dict[str, int] = {}
        for i, item in enumerate(array):
            canonical = json.dumps(item, sort_keys=True)
            if canonical in seen:
                raise InvalidInputError(
                    f"CycloneDX {version.to_version()} schema validation failed at /{path}: "
                    f"items {seen[canonical]} and {i} are identical (uniqueItems)"
                )
            seen[canonical] = i


def _without_children(comp: Any) -> Any:
    """A component without its nested ``components`` (validated on their own)."""
    if isinstance(comp, dict) and isinstance(comp.get("components"), list):
        return {k: v for k, v in comp.items() if k != "components"}
    return comp


def _check_unique_pairs(doc: Mapping[str, Any], handled: set[int]) -> None:
    """Refuse documents whose remaining ``uniqueItems`` checks would cost too much.

    jsonschema compares every pair of items of such an array; the arrays cut
    up by :func:`_validate_cyclonedx` are exempt, every other one counts.
    """
    pairs = 0
    stack: list[tuple[str, object]] = [("", doc)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.items())
        elif isinstance(value, list):
            # jsonschema sorts arrays of strings; others are compared pairwise.
            counted = key in _UNIQUE_KEYS and id(value) not in handled
            if counted and not all(isinstance(item, str) for item in value):
                pairs += len(value) * (len(value) - 1) // 2
            stack.extend((key, item) for item in value)
    if pairs > MAX_UNIQUE_PAIRS:
        raise InvalidInputError(
            f"CycloneDX SBOM has arrays too large to validate ({pairs} item pairs to compare; "
            f"the limit is {MAX_UNIQUE_PAIRS}): list components at the top level"
        )


# fmt: off
def _validate_piece(validator: Any, version: SchemaVersion, piece: Mapping[str, Any],
                    key: str | None, paths: list[str]) -> None:
    # fmt: on
    """Validate one piece; report a failure at its path in the uploaded document."""
    try:
        detail = next(validator.iter_errors(piece), None)
    except RecursionError as exc:  # bounded by MAX_JSON_DEPTH; kept as a last guard
        raise InvalidInputError("CycloneDX SBOM is nested too deeply to validate") from exc
    if detail is None:
        return
    where = [str(p) for p in getattr(detail, "absolute_path", ())]
    if key is not None and len(where) >= 2 and where[0] == key and where[1].isdecimal():
        where = [paths[int(where[1])], *where[2:]]
    elif key is not None and where == [key]:
        where = [paths[0].rsplit("/", 1)[0]]
    if getattr(detail, "validator", None) == "uniqueItems":
        message = "two items are identical (uniqueItems)"
    else:
        message = str(getattr(detail, "message", detail))[:300]
    raise InvalidInputError(
        f"CycloneDX {version.to_version()} schema validation failed at /{'/'.join(where)}: "
        f"{message}"
    )


@dataclass(frozen=True)
class _Draft:
    """A component as found, before its identifiers are checked."""

    where: str  # for reasons: "components[2].components[0]" or "SPDXRef-busybox"
    name: Any
    version: Any = None
    purl: Any = None
    cpe: Any = None
    bom_ref: Any = None
    too_deep: bool = False


def _cyclonedx_drafts(doc: Mapping[str, Any]) -> Iterator[_Draft]:
    """CycloneDX components in document order, nested ones flattened.

    The schema has been checked, so components are objects with a name.
    """
    roots: list[tuple[str, Any]] = []
    metadata = doc.get("metadata")
    top = metadata.get("component") if isinstance(metadata, dict) else None
    if isinstance(top, dict):
        # The release itself is left out; what is nested in it is part of it.
        nested = top.get("components")
        roots.extend((f"metadata.component.components[{i}]", c) for i, c in enumerate(nested or []))
    roots.extend((f"components[{i}]", c) for i, c in enumerate(doc.get("components") or []))
    stack: list[tuple[str, Any, int]] = [(w, c, 1) for w, c in reversed(roots)]
    while stack:
        where, comp, level = stack.pop()
        if not isinstance(comp, dict):
            continue
        if level > MAX_COMPONENT_DEPTH:
            yield _Draft(where=where, name=comp.get("name"), too_deep=True)
            continue
        # fmt: off
        yield _Draft(where=where, name=comp.get("name"), version=comp.get("version"),
                     purl=comp.get("purl"), cpe=comp.get("cpe"), bom_ref=comp.get("bom-ref"))
        # fmt: on
        children = comp.get("components") or []
        stack.extend(
            (f"{where}.components[{i}]", child, level + 1)
            for i, child in reversed(list(enumerate(children)))
        )


def _spdx_drafts(doc: dict[str, Any]) -> list[_Draft]:
    """SPDX packages, after spdx-tools has parsed and validated the document."""
    try:
        document = JsonLikeDictParser().parse(doc)  # type: ignore[no-untyped-call]
    except SPDXParsingError as exc:
        messages = "; ".join(exc.get_messages())[:500]  # type: ignore[no-untyped-call]
        raise InvalidInputError(f"SPDX document could not be parsed: {messages}") from exc
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        # spdx-tools assumes the JSON types its schema gives; wrong ones surface here.
        raise InvalidInputError(f"SPDX document could not be parsed: {exc}"[:500]) from exc
    problems = validate_full_spdx_document(document, "SPDX-2.3")
    if problems:
        first = "; ".join(p.validation_message for p in problems[:3])[:500]
        raise InvalidInputError(f"SPDX document is invalid ({len(problems)} problems): {first}")
    described = {
        r.related_spdx_element_id
        for r in document.relationships
        if r.relationship_type == RelationshipType.DESCRIBES
        and r.spdx_element_id == document.creation_info.spdx_id
    }
    root = next(iter(described)) if len(described) == 1 and len(document.packages) > 1 else None
    drafts = []
    for package in document.packages:
        if package.spdx_id == root:
            continue
        refs = [(r.reference_type, r.locator) for r in package.external_references]
        purls = [loc for kind, loc in refs if kind == "purl"]
        cpes = [loc for kind, loc in refs if kind in ("cpe23Type", "cpe22Type")]
        # The first usable one of each kind, else the first (its error is reported).
        purl = next((p for p in purls if _purl(p)), purls[0] if purls else None)
        cpe = next((c for c in cpes if _cpe(c)), cpes[0] if cpes else None)
        # fmt: off
        drafts.append(_Draft(where=package.spdx_id, name=package.name, version=package.version,
                             purl=purl, cpe=cpe, bom_ref=package.spdx_id))
        # fmt: on
    return drafts


def _build(drafts: Iterable[_Draft]) -> tuple[tuple[Component, ...], tuple[str, ...]]:
    """Turn drafts into components, applying the per-component rules."""
    kept: dict[Component, None] = {}
    skipped: list[str] = []
    over = 0
    for draft in drafts:
        if len(kept) >= MAX_COMPONENTS:
            over += 1
            continue
        component, reason = _component(draft)
        if component is not None:
            kept[component] = None
        else:
            skipped.append(f"{draft.where[:200]}: {reason}")
    if over:
        skipped.append(f"{over} components past the limit of {MAX_COMPONENTS} left out")
    return tuple(kept), tuple(skipped)


def _component(d: _Draft) -> tuple[Component | None, str]:
    """One component from a draft, or None and why it is left out."""
    if d.too_deep:
        return None, f"nested deeper than {MAX_COMPONENT_DEPTH} levels (with its sub-components)"
    if not isinstance(d.name, str) or not d.name.strip():
        return None, "no name"
    # fmt: off
    limits = (("name", d.name, MAX_NAME_LENGTH), ("version", d.version, MAX_VERSION_LENGTH),
              ("purl", d.purl, MAX_PURL_LENGTH), ("cpe", d.cpe, MAX_CPE_LENGTH),
              ("bom-ref", d.bom_ref, MAX_BOM_REF_LENGTH))
    # fmt: on
    for field, value, limit in limits:
        if value is not None and not isinstance(value, str):
            return None, f"{field} is not a string"
        if value is not None and len(value) > limit:
            return None, f"{field} longer than {limit} characters"
        if value is not None and _UNSTORABLE.search(value):
            return None, f"{field} contains NUL or a lone surrogate"
    purl = _purl(d.purl) if d.purl else None
    cpe = _cpe(d.cpe) if d.cpe else None
    if d.purl and purl is None and cpe is None:
        return None, f"invalid purl {d.purl[:100]!r} and no usable CPE"
    if d.cpe and cpe is None and purl is None:
        return None, f"invalid CPE {d.cpe[:100]!r} and no usable purl"
    ecosystem = package = None
    version = d.version or None
    if purl is not None:
        ecosystem, package = _osv_package(purl)
        version = purl.version or version
    try:
        canonical = purl.to_string() if purl is not None else None
        # fmt: off
        component = Component(name=d.name, version=version, purl=canonical, cpe=cpe,
                              ecosystem=ecosystem, package=package, bom_ref=d.bom_ref or None)
        # fmt: on
        _ = component.key  # the package key must be computable for matching
    except (ValueError, UnicodeError) as exc:
        return None, f"unusable identifiers: {exc}"[:300]
    return component, ""


def _purl(text: str) -> PackageURL | None:
    """A parsed purl whose canonical form can be written, or None."""
    try:
        purl = PackageURL.from_string(text)
        purl.to_string()
    except (ValueError, UnicodeError, TypeError):
        return None
    return purl


def _osv_package(purl: PackageURL) -> tuple[str | None, str | None]:
    """(OSV ecosystem, package name as OSV spells it), or (None, None)."""
    namespace = purl.namespace or None
    exact = PURL_ECOSYSTEMS.get((purl.type, namespace))
    if exact is not None and namespace is not None:
        return exact, purl.name  # a distribution: the namespace names it
    ecosystem = PURL_ECOSYSTEMS.get((purl.type, None))
    if ecosystem is None:
        return None, None
    if namespace is None:
        return ecosystem, purl.name
    joiner = _NAMESPACE_JOIN.get(purl.type)
    if joiner is None:
        return None, None  # a namespace this ecosystem does not have: do not guess
    package = f"{namespace}{joiner}{purl.name}"
    if purl.type == "golang" and purl.subpath:
        package = f"{package}/{purl.subpath}"
    return ecosystem, package


# JSON escapes can spell what UTF-8 text columns refuse: NUL and lone surrogates.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_CPE22_SAFE = re.compile(r"[A-Za-z0-9._-]")


def _cpe(text: str) -> str | None:
    """A CPE 2.3 formatted string naming a vendor and product, or None.

    CPE 2.2 URIs (``cpe:/a:vendor:product:version``) are converted; a packed
    2.2 edition (``~``) is not, and gives None.
    """
    if text.startswith("cpe:/"):
        converted = _cpe22_to_23(text)
        if converted is None:
            return None
        text = converted
    if Component(name="cpe", cpe=text).cpe_key is None:
        return None
    return text


def _cpe22_to_23(uri: str) -> str | None:
    fields = uri[len("cpe:/") :].split(":")
    if len(fields) > 7 or fields[0] not in ("a", "o", "h"):
        return None
    out = []
    for i, raw in enumerate(fields):
        if i == 5 and raw.startswith("~"):
            return None  # packed edition: its five parts are not converted
        try:
            value = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            return None
        if value in ("", "*"):
            out.append("*")
        elif value == "-":
            out.append("-")
        else:
            out.append("".join(c if _CPE22_SAFE.fullmatch(c) else "\\" + c for c in value))
    out.extend("*" * (11 - len(out)))
    return "cpe:2.3:" + ":".join(out)
