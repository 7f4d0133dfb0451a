"""Firmware artifacts, content-addressed: the ota domain's one storage seam.

A release stores its artifact through a :class:`BlobStore`; the name of a
blob is the SHA-256 of its bytes, so what TUF signs (the hash) is also
where the bytes are. :class:`LocalBlobStore` keeps them in a directory laid
out as ``<root>/sha256/<2 hex>/<64 hex>``, the layout any static file
server or object store put in front of it serves as is.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Protocol

from fleetward._files import private_dir
from fleetward.errors import InvalidInputError, PayloadTooLargeError

__all__ = ["BlobStore", "LocalBlobStore"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_READ_CHUNK = 1 << 20  # bytes read from an upload at a time


class BlobStore(Protocol):
    """Where artifacts go, named by their SHA-256."""

    def put(self, stream: IO[bytes], *, limit: int) -> tuple[str, int]:
        """Store a stream; returns ``(sha256, length)``.

        Raises:
            PayloadTooLargeError: more than ``limit`` bytes (nothing is kept).
        """


class LocalBlobStore:
    """Content-addressed files in a directory: ``<root>/sha256/<2 hex>/<64 hex>``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        """Where a blob is (it may not exist).

        Raises:
            InvalidInputError: ``sha256`` is not 64 lowercase hex digits.
        """
        if not _SHA256.fullmatch(sha256):
            raise InvalidInputError("a blob is named by its SHA-256")
        return self.root / "sha256" / sha256[:2] / sha256

    def put(self, stream: IO[bytes], *, limit: int) -> tuple[str, int]:
        """Store a stream (hashing it as it goes); returns (sha256, length).

        The bytes go to a private temporary file first and are renamed into
        place once complete, so a reader never sees half a blob.

        Raises:
            PayloadTooLargeError: more than ``limit`` bytes.
        """
        private_dir(self.root / "sha256")
        digest = hashlib.sha256()
        length = 0
        fd, tmp = tempfile.mkstemp(dir=self.root / "sha256", prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(_READ_CHUNK):
                    length += len(chunk)
                    if length > limit:
                        raise PayloadTooLargeError(f"artifacts are limited to {limit} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            target = self.path(sha)
            private_dir(target.parent)
            os.replace(tmp, target)  # mkstemp made it 0600
            return sha, length
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
