"""CVSS v3.x base score from a vector string (pure, private to :mod:`.feeds`).

The one hand-written piece of the feed parsers: no CVSS package is
installed, and OSV records carry CVSS v3 *vectors* without scores. This
implements the base-score formula of the FIRST CVSS v3.1 specification,
section 7.1 (weights in section 7.4, ``Roundup`` in Appendix A) and
nothing else: temporal and environmental metrics are accepted in a vector
(they are valid there) but do not change the base score.

A v3.0 vector is scored with the same formula: v3.1 changed only the
rounding function (to avoid floating-point artefacts) and the definitions'
wording, so the two agree to the published one-decimal score in all but a
handful of edge cases.

:func:`base_score` raises ``ValueError`` for anything that is not a
well-formed v3.x vector; the caller decides what a bad vector costs.
"""

from __future__ import annotations

import math

__all__ = ["MAX_VECTOR_CHARS", "base_score", "severity_for_score"]

# A full v3.1 vector with every temporal and environmental metric is about
# 180 characters; anything much longer is not a vector.
MAX_VECTOR_CHARS = 256

_PREFIXES = ("CVSS:3.0", "CVSS:3.1")

# Section 7.4, Table 16: metric weights.
_AV = {"N": 0.85, "A": 0.62, "L": 0.55, "P": 0.2}
_AC = {"L": 0.77, "H": 0.44}
_PR_UNCHANGED = {"N": 0.85, "L": 0.62, "H": 0.27}
_PR_CHANGED = {"N": 0.85, "L": 0.68, "H": 0.5}
_UI = {"N": 0.85, "R": 0.62}
_CIA = {"H": 0.56, "L": 0.22, "N": 0.0}
_SCOPE = ("U", "C")

_BASE_VALUES: dict[str, tuple[str, ...]] = {
    "AV": tuple(_AV),
    "AC": tuple(_AC),
    "PR": tuple(_PR_UNCHANGED),
    "UI": tuple(_UI),
    "S": _SCOPE,
    "C": tuple(_CIA),
    "I": tuple(_CIA),
    "A": tuple(_CIA),
}
# Temporal and environmental metrics (sections 3 and 4): valid in a vector,
# ignored for the base score.
_OTHER_VALUES: dict[str, tuple[str, ...]] = {
    "E": ("X", "U", "P", "F", "H"),
    "RL": ("X", "O", "T", "W", "U"),
    "RC": ("X", "U", "R", "C"),
    "CR": ("X", "L", "M", "H"),
    "IR": ("X", "L", "M", "H"),
    "AR": ("X", "L", "M", "H"),
    "MAV": ("X", "N", "A", "L", "P"),
    "MAC": ("X", "L", "H"),
    "MPR": ("X", "N", "L", "H"),
    "MUI": ("X", "N", "R"),
    "MS": ("X", "U", "C"),
    "MC": ("X", "N", "L", "H"),
    "MI": ("X", "N", "L", "H"),
    "MA": ("X", "N", "L", "H"),
}


def _roundup(value: float) -> float:
    """Appendix A ``Roundup``: smallest one-decimal number >= value.

    Works on an integer of 1/100,000ths so that, e.g., 4.000000000000001
    rounds to 4.0 and not 4.1 (the reason v3.1 redefined it).
    """
    as_int = round(value * 100_000)
    if as_int % 10_000 == 0:
        return as_int / 100_000.0
    return (math.floor(as_int / 10_000) + 1) / 10.0


def _parse(vector: str) -> dict[str, str]:
    if not isinstance(vector, str) or len(vector) > MAX_VECTOR_CHARS:
        raise ValueError("a CVSS v3 vector is a string of at most 256 characters")
    prefix, sep, rest = vector.strip().partition("/")
    if prefix not in _PREFIXES or not sep:
        raise ValueError(f"not a CVSS v3.x vector: {vector[:40]!r}")
    metrics: dict[str, str] = {}
    for part in rest.split("/"):
        key, colon, value = part.partition(":")
        allowed = _BASE_VALUES.get(key) or _OTHER_VALUES.get(key)
        if not colon or allowed is None:
            raise ValueError(f"unknown CVSS v3 metric {part[:20]!r}")
        if value not in allowed:
            raise ValueError(f"bad value {value[:10]!r} for CVSS v3 metric {key}")
        if key in metrics:
            raise ValueError(f"CVSS v3 metric {key} given twice")
        metrics[key] = value
    missing = [k for k in _BASE_VALUES if k not in metrics]
    if missing:
        raise ValueError(f"CVSS v3 vector lacks base metric(s) {', '.join(missing)}")
    return metrics


def base_score(vector: str) -> float:
    """The CVSS v3.x base score of ``vector`` (section 7.1).

    Args:
        vector: ``CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H`` (or 3.0),
            optionally with temporal/environmental metrics.

    Returns:
        The base score, 0.0-10.0, with one decimal.

    Raises:
        ValueError: not a well-formed CVSS v3.x vector.
    """
    m = _parse(vector)
    changed = m["S"] == "C"
    iss = 1 - (1 - _CIA[m["C"]]) * (1 - _CIA[m["I"]]) * (1 - _CIA[m["A"]])
    # Scope changed: the impact formula of section 7.1 with its 0.029 offset
    # and the 15th-power term; unchanged: linear in ISS.
    impact = 7.52 * (iss - 0.029) - 3.25 * (iss - 0.02) ** 15 if changed else 6.42 * iss
    pr = (_PR_CHANGED if changed else _PR_UNCHANGED)[m["PR"]]
    exploitability = 8.22 * _AV[m["AV"]] * _AC[m["AC"]] * pr * _UI[m["UI"]]
    if impact <= 0:
        return 0.0
    if changed:
        return _roundup(min(1.08 * (impact + exploitability), 10.0))
    return _roundup(min(impact + exploitability, 10.0))


def severity_for_score(score: float) -> str:
    """The qualitative rating of a base score (v3.1 section 5, Table 14).

    Args:
        score: a base score, 0.0-10.0.

    Returns:
        ``none`` (0.0), ``low`` (< 4.0), ``medium`` (< 7.0), ``high``
        (< 9.0) or ``critical``.
    """
    if score <= 0.0:
        return "none"
    if score < 4.0:
        return "low"
    if score < 7.0:
        return "medium"
    if score < 9.0:
        return "high"
    return "critical"
