"""Version orders per ecosystem, parsed once (pure; univers does the parsing).

:class:`VersionCache` maps (scheme, text) to a parsed version or to "does
not parse"; :func:`parse_all` parses the versions of one comparison in
one order, trying the generic tiers (PEP 440, then rpmvercmp) for CPE
versions and ecosystems univers has no order for. Only ``<`` is used on
parsed versions (see :func:`_parse`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol, cast

from univers import versions as uv

from fleetward.errors import UnevaluableVersionError

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "GENERIC",
    "MAX_VERSION_LENGTH",
    "Ordered",
    "VersionCache",
    "parse_all",
    "scheme_for",
]

# Longest version string parsed; real ones (Debian epochs and backports, Go
# pseudo-versions) stay under 80 characters. Longer ones are unevaluable.
MAX_VERSION_LENGTH: Final = 256
# Parsed versions kept by a VersionCache before the oldest are dropped.
DEFAULT_CACHE_SIZE: Final = 262_144

GENERIC: Final = "generic"
# Tried in order: the first under which every version of a comparison parses.
_GENERIC_TIERS: Final = ("pypi", "rpm")

_CLASSES: Final[Mapping[str, type[uv.Version]]] = {
    "pypi": uv.PypiVersion,
    "semver": uv.SemverVersion,
    "golang": uv.GolangVersion,
    "maven": uv.MavenVersion,
    "deb": uv.DebianVersion,
    "apk": uv.AlpineLinuxVersion,
    "gem": uv.RubygemsVersion,
    "nuget": uv.NugetVersion,
    "composer": uv.ComposerVersion,
    "rpm": uv.RpmVersion,
}
# SemVer precedence ignores build metadata; univers's SemverVersion keeps it
# in its precedence key and equality, so it is cut off before parsing.
_STRIP_BUILD: Final = frozenset({"semver", "golang"})

# OSV ecosystem (lowercase, without its ":release" suffix; "_" stands for a
# space) -> version scheme.
# Ecosystems missing here (Hackage, CRAN, Linux, OSS-Fuzz, OpenWrt, ...) use
# the generic order.
_ECOSYSTEM_SCHEMES: Final[Mapping[str, str]] = {
    ecosystem: scheme
    for scheme, ecosystems in (
        ("pypi", "pypi"),
        ("semver", "npm crates.io hex pub swifturl"),
        ("golang", "go"),
        ("maven", "maven"),
        ("deb", "debian ubuntu"),
        ("apk", "alpine wolfi chainguard"),
        ("gem", "rubygems"),
        ("nuget", "nuget"),
        ("composer", "packagist"),
        ("rpm", "red_hat rocky_linux almalinux opensuse suse mageia photon_os openeuler"),
    )
    for ecosystem in (e.replace("_", " ") for e in ecosystems.split())
}

_MISSING: Final = object()


class Ordered(Protocol):
    """A parsed version: only ``<`` is used (see ``_parse``)."""

    def __lt__(self, other: Any, /) -> bool: ...


class VersionCache:
    """Bounded cache of parsed versions: ``(scheme, text) -> version | None``.

    ``None`` records "unparseable in this scheme", so a bad string is tried
    once. When full, the oldest entry is dropped (insertion order).
    """

    def __init__(self, maxsize: int = DEFAULT_CACHE_SIZE) -> None:
        """Make an empty cache.

        Args:
            maxsize: Entries kept at most (at least 1).

        Raises:
            ValueError: ``maxsize`` is below 1.
        """
        if maxsize < 1:
            raise ValueError("a version cache holds at least one entry")
        self._maxsize = maxsize
        self._items: dict[tuple[str, str], Ordered | None] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        # An empty cache is still a cache: ``cache or VersionCache()`` keeps it.
        return True

    def parse(self, scheme: str, text: str) -> Ordered | None:
        """The version ``text`` in ``scheme``, or None when it does not parse.

        Args:
            scheme: ``pypi``, ``semver``, ``golang``, ``maven``, ``deb``,
                ``apk``, ``gem``, ``nuget``, ``composer`` or ``rpm``.
            text: The version as found.

        Returns:
            An object ordered by ``<`` in that scheme, or None.
        """
        key = (scheme, text)
        found = self._items.get(key, _MISSING)
        if found is not _MISSING:
            self.hits += 1
            return found  # type: ignore[return-value]
        self.misses += 1
        parsed = _parse(scheme, text)
        if len(self._items) >= self._maxsize:
            del self._items[next(iter(self._items))]
        self._items[key] = parsed
        return parsed


def _parse(scheme: str, text: str) -> Ordered | None:
    if not text or len(text) > MAX_VERSION_LENGTH:
        return None
    cls = _CLASSES[scheme]
    cleaned = text.strip()
    if scheme in _STRIP_BUILD:
        cleaned = cleaned.split("+", 1)[0]
    try:
        parsed = cls(cleaned)
    # univers's parsers raise assorted exception types on hostile strings
    # (ValueError subclasses, TypeError, IndexError): all mean "unparseable".
    except Exception:
        return None
    # Only ``<`` is ever used: univers's AlpineLinuxVersion defines __lt__ but
    # inherits attrs' __ge__, which compares the raw strings (1.10 >= 1.9 is
    # False). Where the class keeps attrs' order, its ``value`` (packaging's,
    # Debian's, Maven's ... version object) orders the same and compares
    # several times faster than the attrs wrapper.
    if type(parsed).__lt__ is uv.Version.__lt__:
        return cast(Ordered, parsed.value)
    return parsed


def scheme_for(range_type: str, ecosystem: str) -> str:
    if range_type == "SEMVER":
        return "semver"
    base = ecosystem.split(":", 1)[0].strip().lower()
    return _ECOSYSTEM_SCHEMES.get(base, GENERIC)


def parse_all(scheme: str, texts: Sequence[str], cache: VersionCache) -> list[Ordered]:
    """Parse every text in one order (for generic: the first tier that takes all)."""
    tiers = _GENERIC_TIERS if scheme == GENERIC else (scheme,)
    bad = ""
    for tier in tiers:
        parsed = [cache.parse(tier, t) for t in texts]
        if all(p is not None for p in parsed):
            return parsed  # type: ignore[return-value]
        bad = next(t for t, p in zip(texts, parsed, strict=True) if p is None)
    raise UnevaluableVersionError(f"{bad[:MAX_VERSION_LENGTH]!r} is not a {scheme} version")
