"""PKCS#11 URIs (RFC 7512): round trip, percent-encoding, and what is refused."""

from __future__ import annotations

import pytest

from fleetward.errors import InvalidInputError
from fleetward.keys import pkcs11_uri
from fleetward.keys._p11uri import parse_pkcs11_uri


@pytest.mark.parametrize(
    ("token", "key"),
    [("ca", "root-2025"), ("my token", "a;b=c/d?e%f"), ("jeton", "clé")],
)
def test_round_trip(token: str, key: str) -> None:
    uri = pkcs11_uri(token_label=token, key_label=key)
    assert uri.startswith("pkcs11:token=")
    assert parse_pkcs11_uri(uri) == (token, key)


def test_special_characters_are_percent_encoded() -> None:
    uri = pkcs11_uri(token_label="a b", key_label="x;y")
    assert uri == "pkcs11:token=a%20b;object=x%3By"


def test_attribute_order_and_type_private_are_accepted() -> None:
    assert parse_pkcs11_uri("pkcs11:object=k;type=private;token=t") == ("t", "k")


@pytest.mark.parametrize(
    "uri",
    [
        "file:/x",
        "pkcs11:token=t",
        "pkcs11:object=k",
        "pkcs11:token=t;object=k?pin-value=1234",
        "pkcs11:token=t;object=k?module-path=/tmp/evil.so",
        "pkcs11:token=t;object=k;type=public",
        "pkcs11:token=t;object=k;serial=1",
        "pkcs11:token=t;token=u;object=k",
        "pkcs11:token;object=k",
        "pkcs11:token=%ff;object=k",
        "pkcs11:token=" + "t" * 33 + ";object=k",
        "pkcs11:token=t;object=" + "k" * 129,
    ],
)
def test_refused(uri: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_pkcs11_uri(uri)
