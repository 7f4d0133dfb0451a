"""Build the Mosquitto plugin (and, for tests, the bare evaluator) from source.

The C sources ship in ``native/``. Builds are cached by a hash of the sources
and the compiler command, so ``fleetward up`` compiles once per version. The
plugin needs a C compiler plus the ``mosquitto-dev`` and ``libssl-dev``
headers (``scripts/bootstrap`` installs them).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from fleetward._files import private_dir
from fleetward.errors import PluginBuildError

__all__ = ["PluginBuildError", "build_evaluator", "build_plugin", "source_dir"]

DEFAULT_CC = "cc"  # the compiler command; callers may name another
_CFLAGS = ["-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-std=gnu11"]


def source_dir() -> Path:
    """Where the plugin's C sources are."""
    return Path(__file__).with_name("native")


def _build(out_dir: Path, name: str, sources: list[str], libs: list[str], cc: str) -> Path:
    if shutil.which(cc) is None:
        raise PluginBuildError(f"no C compiler ({cc}) to build the fleetward broker plugin")
    src = source_dir()
    digest = hashlib.sha256(" ".join([cc, *_CFLAGS, *libs]).encode())
    for path in sorted(src.iterdir()):
        if path.suffix in (".c", ".h"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    target = out_dir / f"{name}-{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    private_dir(out_dir)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    cmd = [cc, *_CFLAGS, "-o", str(tmp), *(str(src / s) for s in sources), *libs]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise PluginBuildError(f"building {name} failed:\n{proc.stderr.strip()}")
    os.chmod(tmp, 0o700)  # the linker makes it 0755 less the umask; the home is private
    os.replace(tmp, target)
    return target


def build_plugin(out_dir: Path, *, cc: str = DEFAULT_CC) -> Path:
    """Compile ``fw_plugin.so`` into ``out_dir`` (cached) and return its path.

    Args:
        out_dir: Where the build (and its cache) goes.
        cc: The C compiler command.

    Raises:
        PluginBuildError: no compiler, missing headers, or a compile error.
    """
    return _build(out_dir, "fw_plugin", ["fw_plugin.c", "fw_acl.c"], ["-lcrypto"], cc)


def build_evaluator(out_dir: Path, *, cc: str = DEFAULT_CC) -> Path:
    """Compile the bare table evaluator (``fw_acl.c``) for differential tests."""
    return _build(out_dir, "fw_acl", ["fw_acl.c"], [], cc)
