"""Private files: the home directory is readable by its owner only.

The home holds the CA key files, the passphrase that unlocks them, the
database (token hashes, the audit log) and the broker's unencrypted keys, so
nobody but the user running fleetward may read, list or replace anything in
it. The rules, applied by every writer of the home:

1. Directories fleetward creates in the home, and the home itself, are 0700;
   an existing one is narrowed to 0700 when fleetward creates inside it.
2. Files are 0600. They are created at that mode with ``O_EXCL`` and then
   ``fchmod``-ed, so neither the umask nor a file that was already there
   widens them, and they replace their target atomically (a reader sees the
   old or the new file, never half of one).
3. SQLite creates its own files and gives ``-wal`` and ``-shm`` the mode of
   the database file, so the database file is created empty at 0600 before
   SQLite opens it (and narrowed if it exists).
4. The ``fleetward`` entry point also sets the umask to 0077, which covers
   whatever a library writes on its own.

:func:`inspect_home` is what ``fleetward doctor`` runs: it reports group or
other permission bits on the home and everything under it, and entries not
owned by the current user, and (with ``fix``) removes those bits. It cannot
fix ownership; that takes the owner or root.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "Finding",
    "HomeReport",
    "inspect_home",
    "narrow",
    "private_dir",
    "private_file",
    "write_private",
]

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# Permission bits for anyone but the owner: none may be set in the home.
_SHARED_BITS = 0o077


def private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents at 0700, or narrow it to 0700.

    Returns:
        ``path``.
    """
    missing: list[Path] = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        # Another process may create it between the check and here.
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=PRIVATE_DIR_MODE)
    if stat.S_IMODE(path.stat().st_mode) != PRIVATE_DIR_MODE:
        os.chmod(path, PRIVATE_DIR_MODE)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, mode 0600 (its directory must exist)."""
    # mkstemp opens with O_CREAT | O_EXCL at 0600 under a fresh name, so a
    # stale or planted temporary file is never reused or followed.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def private_file(path: Path) -> None:
    """Create ``path`` empty at 0600 if it is missing, else narrow it to the owner.

    For files another program fills in (SQLite's database). An existing file
    keeps its owner bits; if it belongs to someone else it is left alone for
    ``fleetward doctor`` to report.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    except FileExistsError:
        narrow(path)
        return
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    finally:
        os.close(fd)


def narrow(path: Path) -> None:
    """Remove group and other bits from ``path`` if it exists and is ours."""
    try:
        st = path.stat()
        if st.st_uid == os.geteuid() and st.st_mode & _SHARED_BITS:
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~_SHARED_BITS)
    except FileNotFoundError:
        return
    except PermissionError:
        return  # not ours to change; `fleetward doctor` reports it


@dataclass(frozen=True)
class Finding:
    """One problem with one path, and whether it was fixed."""

    path: Path
    problem: str
    fixed: bool = False


@dataclass(frozen=True)
class HomeReport:
    """What :func:`inspect_home` found (and fixed)."""

    findings: tuple[Finding, ...]

    @property
    def remaining(self) -> tuple[Finding, ...]:
        """Problems still there."""
        return tuple(f for f in self.findings if not f.fixed)


def _problems(path: Path, st: os.stat_result, *, uid: int, fix: bool) -> list[Finding]:
    found: list[Finding] = []
    if st.st_uid != uid:
        found.append(Finding(path, f"owned by uid {st.st_uid}, not by you (uid {uid})"))
    # A symlink's own mode means nothing on Linux; what it points to is
    # inspected where it lives (if that is in the home).
    if stat.S_ISLNK(st.st_mode):
        return found
    mode = stat.S_IMODE(st.st_mode)
    if mode & _SHARED_BITS:
        wanted = mode & ~_SHARED_BITS
        fixed = False
        if fix and st.st_uid == uid:
            try:
                os.chmod(path, wanted)
                fixed = True
            except OSError:
                fixed = False
        verb = "narrowed to" if fixed else "should be"
        found.append(
            Finding(path, f"mode {mode:04o} lets group/others in ({verb} {wanted:04o})", fixed)
        )
    return found


def inspect_home(
    home: Path, *, uid: int, fix: bool = False, extra: Iterable[Path] = ()
) -> HomeReport:
    """Check the home, everything under it and ``extra`` paths (symlinks not followed).

    The walk is top-down, so with ``fix`` the home is closed before anything
    inside it is changed.

    Args:
        home: The home directory.
        uid: Who should own everything (the current user).
        fix: Remove group/other bits from entries owned by ``uid``.
        extra: Further paths to check if they exist (a database kept elsewhere).

    Returns:
        Every finding, each marked fixed or not.
    """
    findings: list[Finding] = []

    def check(path: Path) -> None:
        try:
            st = path.lstat()
        except FileNotFoundError:
            return
        findings.extend(_problems(path, st, uid=uid, fix=fix))

    def unreadable(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else home
        findings.append(Finding(where, f"cannot be read: {exc.strerror}"))

    check(home)
    for top, dirs, files in os.walk(home, onerror=unreadable):
        for name in sorted(dirs) + sorted(files):
            check(Path(top) / name)
    for path in extra:
        if not path.is_relative_to(home):
            check(path)
    return HomeReport(findings=tuple(findings))
