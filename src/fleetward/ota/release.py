"""Release checks: versions, SBOM, reference measurements, hardware (pure).

A release is **deployable** only when its review gate passes
(:func:`review_gate`): signed to the product role's threshold (approvals),
a CycloneDX SBOM that parses, and reference boot measurements for every
stage attestation checks. Versions are ``MAJOR.MINOR.PATCH`` and strictly
increase per product: going back to old content is a new, higher release.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleetward.errors import ConflictError, InvalidInputError, PayloadTooLargeError

__all__ = [
    "BOOT_STAGES",
    "MAX_ARTIFACT_BYTES",
    "MAX_SBOM_BYTES",
    "GateResult",
    "check_filename",
    "check_hardware",
    "check_measurements",
    "check_new_version",
    "parse_sbom",
    "parse_version",
    "review_gate",
]

MAX_ARTIFACT_BYTES = 64 * 1024 * 1024  # firmware images of this fleet; raise per deployment
MAX_SBOM_BYTES = 4 * 1024 * 1024
MAX_HARDWARE_IDS = 64
BOOT_STAGES = ("bootloader", "kernel", "application")
_VERSION = re.compile(r"^(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})$")
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def parse_version(text: str) -> tuple[int, int, int]:
    """``MAJOR.MINOR.PATCH`` as a comparable tuple.

    Raises:
        InvalidInputError: anything else.
    """
    m = _VERSION.fullmatch(text or "")
    if not m:
        raise InvalidInputError(f"version {text!r} is not MAJOR.MINOR.PATCH")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def check_new_version(version: str, existing: Iterable[str]) -> None:
    """A product's versions strictly increase (withdrawn ones count too).

    Raises:
        InvalidInputError: malformed version.
        ConflictError: not higher than every existing version.
    """
    new = parse_version(version)
    highest = max((parse_version(v) for v in existing), default=None)
    if highest is not None and new <= highest:
        shown = ".".join(map(str, highest))
        raise ConflictError(
            f"version {version} is not higher than {shown}: versions strictly increase; "
            "ship old content as a new, higher version"
        )


def check_filename(name: str) -> str:
    """An artifact file name usable as a TUF target path component."""
    if not _SAFE.fullmatch(name or ""):
        raise InvalidInputError("artifact file names are 1-64 characters of [A-Za-z0-9._-]")
    return name


def check_hardware(ids: Sequence[str]) -> list[str]:
    """Hardware ids the release runs on (at least one)."""
    if not ids or len(ids) > MAX_HARDWARE_IDS or not all(_SAFE.fullmatch(i) for i in ids):
        raise InvalidInputError(f"hardware must list 1-{MAX_HARDWARE_IDS} ids of [A-Za-z0-9._-]")
    return sorted(set(ids))


def check_measurements(measurements: Mapping[str, Any]) -> dict[str, str]:
    """Reference SHA-256 per boot stage; every stage of :data:`BOOT_STAGES`.

    Raises:
        InvalidInputError: a stage missing, unknown or not a SHA-256 hex digest.
    """
    if not isinstance(measurements, Mapping):
        raise InvalidInputError("measurements must map boot stages to SHA-256 hex digests")
    unknown = set(measurements) - set(BOOT_STAGES)
    if unknown:
        raise InvalidInputError(f"unknown boot stage(s): {', '.join(sorted(unknown))}")
    missing = [s for s in BOOT_STAGES if s not in measurements]
    if missing:
        raise InvalidInputError(f"reference measurement missing for: {', '.join(missing)}")
    for stage, digest in measurements.items():
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise InvalidInputError(f"measurement of {stage} is not a lowercase SHA-256 hex digest")
    return {s: str(measurements[s]) for s in BOOT_STAGES}


@dataclass(frozen=True)
class Sbom:
    """The parts of a CycloneDX SBOM fleetward reads."""

    spec_version: str
    components: tuple[tuple[str, str], ...]  # (name, version)


def parse_sbom(data: bytes) -> Sbom:
    """Parse a CycloneDX JSON SBOM.

    Raises:
        PayloadTooLargeError: over :data:`MAX_SBOM_BYTES`.
        InvalidInputError: not JSON, not CycloneDX, or components malformed.
    """
    if len(data) > MAX_SBOM_BYTES:
        raise PayloadTooLargeError(f"an SBOM is limited to {MAX_SBOM_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"SBOM is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("bomFormat") != "CycloneDX":
        raise InvalidInputError("SBOM must be CycloneDX JSON (bomFormat 'CycloneDX')")
    spec = doc.get("specVersion")
    if not isinstance(spec, str) or not re.fullmatch(r"1\.\d+", spec):
        raise InvalidInputError("SBOM specVersion must be 1.x")
    components = doc.get("components", [])
    if not isinstance(components, list):
        raise InvalidInputError("SBOM components must be a list")
    parsed = []
    for c in components:
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            raise InvalidInputError("every SBOM component needs a name")
        parsed.append((c["name"], str(c.get("version", ""))))
    return Sbom(spec_version=spec, components=tuple(parsed))


@dataclass(frozen=True)
class GateResult:
    """The review gate's findings: deployable when there are none."""

    findings: tuple[str, ...]

    @property
    def passed(self) -> bool:
        """Whether the release may be deployed."""
        return not self.findings


def review_gate(
    *, approvals: int, threshold: int, sbom: bytes | None, measurements: Mapping[str, Any]
) -> GateResult:
    """Collect every reason a release is not deployable yet."""
    findings = []
    if approvals < threshold:
        findings.append(f"signed by {approvals} of the {threshold} release signers needed")
    if sbom is None:
        findings.append("no SBOM")
    else:
        try:
            parse_sbom(sbom)
        except (InvalidInputError, PayloadTooLargeError) as exc:
            findings.append(f"SBOM: {exc.detail}")
    try:
        check_measurements(measurements)
    except InvalidInputError as exc:
        findings.append(f"measurements: {exc.detail}")
    return GateResult(tuple(findings))
