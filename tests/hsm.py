"""A private SoftHSM2 token for the whole test session (fixture ``softhsm``).

A PKCS#11 module reads its configuration once, when it is first initialised
in the process, and tokens created by ``softhsm2-util`` afterwards stay
invisible to it. So one session-scoped fixture writes a ``softhsm2.conf``
pointing at a temporary token directory, sets ``SOFTHSM2_CONF`` before the
library is loaded, and initialises one token; tests generate keys under
labels of their own. It is registered once, by the root ``conftest.py``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pkcs11 import exceptions as p11

from fleetward.keys import pkcs11_uri
from fleetward.keys._p11session import DEFAULT_MODULE, load_module

__all__ = ["SoftHsm", "softhsm"]

SOFTHSM_MODULE = os.environ.get("FLEETWARD_TEST_PKCS11_MODULE", DEFAULT_MODULE)


@dataclass(frozen=True)
class SoftHsm:
    """A SoftHSM2 token private to this test session."""

    module: str
    token_label: str
    pin: str
    so_pin: str

    def uri(self, key_label: str) -> str:
        """Return the PKCS#11 URI of a key on this token."""
        return pkcs11_uri(token_label=self.token_label, key_label=key_label)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """Initialise a token in a temporary SoftHSM2 token directory."""
    if not Path(SOFTHSM_MODULE).exists() or shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM2 is not installed")
    root = tmp_path_factory.mktemp("softhsm")
    tokens = root / "tokens"
    tokens.mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    hsm = SoftHsm(
        module=SOFTHSM_MODULE,
        token_label=f"fw-test-{secrets.token_hex(4)}",
        pin=secrets.token_hex(8),
        so_pin=secrets.token_hex(8),
    )
    with pytest.MonkeyPatch.context() as mp:
        # Before the module is loaded: SoftHSM2 reads this at C_Initialize.
        mp.setenv("SOFTHSM2_CONF", str(conf))
        mp.setenv("FLEETWARD_PKCS11_MODULE", hsm.module)
        mp.delenv("FLEETWARD_PKCS11_PIN", raising=False)
        subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                hsm.token_label,
                "--pin",
                hsm.pin,
                "--so-pin",
                hsm.so_pin,
            ],
            check=True,
            capture_output=True,
        )
        lib = load_module(hsm.module)
        try:
            lib.get_token(token_label=hsm.token_label)
        except p11.NoSuchToken:
            # Something in this process loaded the module before us, with
            # another configuration; start it over so it reads ours.
            lib.reinitialize()
        yield hsm
