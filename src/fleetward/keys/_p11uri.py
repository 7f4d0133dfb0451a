"""RFC 7512 ``pkcs11:`` URIs that name a signer's key: build, parse, refuse.

A signer URI names a token and a key by label and nothing else. Labels are
percent-encoded on the way out and decoded (strictly, as UTF-8) on the way in.
Query attributes are refused outright: ``pin-value`` would put a secret in a
string that is logged and stored, and ``module-path`` would let a stored URI
choose which shared library this process loads.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from fleetward.errors import InvalidInputError

__all__ = [
    "MAX_KEY_LABEL_LENGTH",
    "MAX_TOKEN_LABEL_LENGTH",
    "check_labels",
    "parse_pkcs11_uri",
    "pkcs11_uri",
]

# CK_TOKEN_INFO.label is a fixed 32-byte field.
MAX_TOKEN_LABEL_LENGTH = 32
# Key labels have no PKCS#11 limit; this bounds what a URI can make us search for.
MAX_KEY_LABEL_LENGTH = 128


def pkcs11_uri(*, token_label: str, key_label: str) -> str:
    """Return the RFC 7512 URI ``pkcs11:token=<label>;object=<label>``."""
    return f"pkcs11:token={quote(token_label, safe='')};object={quote(key_label, safe='')}"


def check_labels(token_label: str, key_label: str) -> None:
    """Refuse empty labels and labels over the named limits.

    Raises:
        InvalidInputError: A label is empty or too long.
    """
    if not token_label or len(token_label.encode()) > MAX_TOKEN_LABEL_LENGTH:
        raise InvalidInputError(f"token label must be 1 to {MAX_TOKEN_LABEL_LENGTH} bytes")
    if not key_label or len(key_label.encode()) > MAX_KEY_LABEL_LENGTH:
        raise InvalidInputError(f"key label must be 1 to {MAX_KEY_LABEL_LENGTH} bytes")


def parse_pkcs11_uri(uri: str) -> tuple[str, str]:
    """Parse a ``pkcs11:`` URI into ``(token_label, key_label)``.

    Only the ``token``, ``object`` and ``type=private`` path attributes are
    understood. Query attributes are refused: ``pin-value`` would put a secret
    into a string that is logged and stored, and ``module-path`` would let a
    stored URI choose which shared library this process loads.

    Raises:
        InvalidInputError: Malformed URI, a missing or unknown attribute.
    """
    if not uri.startswith("pkcs11:"):
        raise InvalidInputError("a PKCS#11 URI starts with 'pkcs11:'")
    body = uri[len("pkcs11:") :]
    if "?" in body:
        raise InvalidInputError("PKCS#11 URI query attributes (pin-value, module-path) are refused")
    attrs: dict[str, str] = {}
    for part in filter(None, body.split(";")):
        name, sep, value = part.partition("=")
        if not sep or name in attrs:
            raise InvalidInputError(f"malformed or repeated PKCS#11 URI attribute {part!r}")
        try:
            attrs[name] = unquote(value, errors="strict")
        except UnicodeDecodeError:
            raise InvalidInputError(f"PKCS#11 URI attribute {name!r} is not UTF-8") from None
    if attrs.pop("type", "private") != "private":
        raise InvalidInputError("a signer URI names a private key (type=private)")
    token_label, key_label = attrs.pop("token", ""), attrs.pop("object", "")
    if attrs:
        raise InvalidInputError(f"unsupported PKCS#11 URI attributes: {', '.join(sorted(attrs))}")
    check_labels(token_label, key_label)
    return token_label, key_label
