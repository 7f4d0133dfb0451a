"""python-tuf's one I/O seam, over HTTPS to fleetward's device plane.

The TUF repository is on the device plane, which speaks TLS only and
presents a certificate of fleetward's own service CA. python-tuf's stock
fetcher (urllib3) trusts the system's CAs and takes no client certificate,
so :class:`HttpsFetcher` implements ``FetcherInterface`` on an
``httpx.Client`` built with the caller's ``ssl.SSLContext``: the service CA
as trust anchor and, where the agent has one, the device's certificate
(:func:`fleetward.agent._tls.client_context`). TUF still verifies every
byte it receives; TLS adds who may watch or answer.

The fetcher keeps python-tuf's contract: an HTTP error status raises
``DownloadHTTPError``, a stalled connection ``SlowRetrievalError``, and
python-tuf enforces each file's length limit while it reads the chunks.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator

import httpx
from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

__all__ = ["CHUNK_BYTES", "TIMEOUT_SECONDS", "HttpsFetcher"]

TIMEOUT_SECONDS = 30.0  # connect, and the longest gap between two reads
CHUNK_BYTES = 64 * 1024  # python-tuf counts the length limit chunk by chunk


class HttpsFetcher(FetcherInterface):
    """A TUF fetcher over one ``httpx.Client`` (close it with :meth:`close`).

    Args:
        verify: The TLS context (the service CA; the device certificate if any).
        timeout: Seconds for the connection and between reads.
    """

    def __init__(self, verify: ssl.SSLContext, *, timeout: float = TIMEOUT_SECONDS) -> None:
        if not isinstance(verify, ssl.SSLContext):
            raise TypeError("verify must be an ssl.SSLContext")
        self._http = httpx.Client(verify=verify, timeout=timeout, follow_redirects=False)

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            resp = self._http.send(self._http.build_request("GET", url), stream=True)
        except httpx.TimeoutException as exc:
            raise exceptions.SlowRetrievalError from exc
        if resp.status_code >= 400:
            resp.close()
            raise exceptions.DownloadHTTPError(
                f"HTTP error occurred with status {resp.status_code}", resp.status_code
            )
        return self._chunks(resp)

    @staticmethod
    def _chunks(resp: httpx.Response) -> Iterator[bytes]:
        try:
            yield from resp.iter_bytes(CHUNK_BYTES)
        except httpx.TimeoutException as exc:
            raise exceptions.SlowRetrievalError from exc
        finally:
            resp.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __del__(self) -> None:
        # python-tuf's Updater never closes its fetcher: one dropped with
        # its updater still closes its connections (no socket left to the GC).
        with contextlib.suppress(Exception):
            self._http.close()

    def __enter__(self) -> HttpsFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
