"""Verified, resumable, atomic downloads (model weights, benchmark data sets).

A transfer streams into ``<dest>.part``, resumes it with an HTTP ``Range`` request after an
interruption, retries connection errors, timeouts and 5xx answers with exponential backoff, and
checks size and sha256 before the file is renamed into place. A file that fails the check is
deleted, so nothing corrupt ever sits at ``dest`` (peer tools keep zero-byte or truncated
weights around and fail later).

Environment:
    RESTORECLI_OFFLINE: ``1`` refuses every network transfer (``file://`` URLs still work).
    RESTORECLI_MIRROR: base URL that replaces the host and folder of every file URL
        (see :func:`apply_mirror`); ``file:///shared/folder`` works for air-gapped machines.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from restorecli.console import bars_wanted, progress_bars
from restorecli.errors import ChecksumError, DownloadError
from restorecli.filelock import exclusive_lock

if TYPE_CHECKING:
    import requests

__all__ = [
    "DEFAULT_TIMEOUT",
    "DownloadResult",
    "apply_mirror",
    "byte_progress",
    "download",
    "download_file",
    "is_offline",
    "sha256_file",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 60.0)
"""(connect, read) timeouts in seconds; the read timeout applies to every chunk, so a stalled
server fails after that long even in the middle of a transfer."""

_CHUNK = 1 << 20
_NET_CHUNK = 1 << 16
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class DownloadResult:
    """Outcome of :func:`download`.

    Attributes:
        path: Final location of the file.
        sha256: Hex digest of the file as written.
        size: Size in bytes.
        verified: True when the digest was checked against a pinned one.
    """

    path: Path
    sha256: str
    size: int
    verified: bool


def is_offline() -> bool:
    """Whether ``RESTORECLI_OFFLINE`` forbids network access."""
    return os.environ.get("RESTORECLI_OFFLINE", "").strip().lower() in _TRUE


def apply_mirror(url: str | None, filename: str) -> str | None:
    """Rewrite a file URL for the mirror named by ``RESTORECLI_MIRROR``.

    The mirror is a flat folder: ``RESTORECLI_MIRROR=https://mirror.lan/restorecli`` turns any URL
    of ``MaIR_SR_x4.pth`` into ``https://mirror.lan/restorecli/MaIR_SR_x4.pth``. Files without an
    upstream URL (manual downloads) get a mirror URL too, which is how an organisation serves them.

    Args:
        url: Upstream URL, or None when the file has none.
        filename: Name of the file inside the mirror folder.

    Returns:
        The mirror URL when a mirror is set, else ``url`` unchanged.
    """
    mirror = os.environ.get("RESTORECLI_MIRROR", "").strip()
    if not mirror:
        return url
    return f"{mirror.rstrip('/')}/{filename}"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks.

    Args:
        path: File to hash.

    Returns:
        The lowercase hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None,
    size: int | None = None,
    allow_unverified: bool = False,
    progress: bool = True,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    retries: int = 3,
    backoff: float = 1.0,
) -> Path:
    """Download ``url`` to ``dest``, verified and atomically; see :func:`download`.

    Returns:
        ``dest`` as a Path.
    """
    return download(
        url,
        dest,
        sha256=sha256,
        size=size,
        allow_unverified=allow_unverified,
        progress=progress,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
    ).path


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None,
    size: int | None = None,
    allow_unverified: bool = False,
    progress: bool = True,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    retries: int = 3,
    backoff: float = 1.0,
    session: requests.Session | None = None,
) -> DownloadResult:
    """Download ``url`` to ``dest``: streamed, resumable, verified, renamed into place.

    When ``dest`` already exists and matches ``sha256`` (and ``size``), nothing is transferred.
    A leftover ``<dest>.part`` from an interrupted run is resumed.

    Args:
        url: ``http(s)://`` or ``file://`` URL.
        dest: Final path; its folder is created.
        sha256: Expected hex digest, or None when none is known (needs ``allow_unverified``).
        size: Expected size in bytes, if known.
        allow_unverified: Accept a file without a pinned digest; its digest is logged so it
            can be pinned.
        progress: Show a progress bar on stderr (only on terminals, see ``restorecli.console``).
        timeout: Seconds, or (connect, read) seconds, per network operation.
        retries: Extra attempts after a connection error, timeout or 5xx answer.
        backoff: First wait between attempts in seconds; doubles each time.
        session: A ``requests.Session`` to reuse (tests, connection pooling).

    Returns:
        Path, digest and size of the verified file.

    Raises:
        DownloadError: Offline mode, HTTP error, no digest without ``allow_unverified``, or
            every attempt failed.
        ChecksumError: Size or digest differ from the pinned ones (the file is deleted).
    """
    dest = Path(dest)
    expected = _normalise_sha256(sha256)
    if expected is None and not allow_unverified:
        raise DownloadError(
            f"no sha256 is known for {url}, so it cannot be verified; allow unverified downloads "
            "(--allow-unverified) to fetch it anyway and pin the sha256 that is printed"
        )
    if _already_verified(dest, expected, size):
        return DownloadResult(dest, expected, dest.stat().st_size, verified=True)

    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise DownloadError(f"unsupported URL {url!r}: expected an http://, https:// or file:// URL")
    if scheme != "file" and is_offline():
        raise DownloadError(
            f"offline mode (RESTORECLI_OFFLINE=1) forbids downloading {url}; unset it, or point "
            "RESTORECLI_MIRROR at a local mirror (file:///folder works)"
        )

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    # Two processes fetching the same file (a batch script started twice, torchrun ranks) would
    # append to one .part; the second waits here and then finds the first one's verified file.
    with exclusive_lock(
        dest.with_name(dest.name + ".lock"),
        on_wait=lambda: logger.info("waiting for another process that is downloading %s", url),
    ):
        if _already_verified(dest, expected, size):  # fetched by the process we waited for
            return DownloadResult(dest, expected, dest.stat().st_size, verified=True)
        resumed = part.is_file() and part.stat().st_size > 0
        while True:
            if scheme == "file":
                _copy_local(url, part)
            else:
                _fetch_with_retries(url, part, size, progress, timeout, retries, backoff, session)
            try:
                got, got_size = _verify(part, url, expected, size)
                break
            except ChecksumError:
                if not resumed:
                    raise
                # The bytes kept from an earlier run may belong to another version of the file.
                logger.info("resumed download of %s failed verification; downloading it again from the start", url)
                resumed = False
        os.replace(part, dest)
    if expected is None:
        logger.warning("unverified download %s: sha256 %s (%d bytes); pin it to verify later", url, got, got_size)
    return DownloadResult(dest, got, got_size, verified=expected is not None)


def _already_verified(dest: Path, expected: str | None, size: int | None) -> bool:
    if expected is None or not dest.is_file() or (size is not None and dest.stat().st_size != size):
        return False
    return sha256_file(dest) == expected


def _verify(part: Path, url: str, expected: str | None, size: int | None) -> tuple[str, int]:
    """Digest and size of ``part``; deletes it and raises ChecksumError when they differ from the pins."""
    got_size = part.stat().st_size
    if size is not None and got_size != size:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"size mismatch for {url}: expected {size} bytes, got {got_size}; the file was deleted")
    got = sha256_file(part)
    if expected is not None and got != expected:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"sha256 mismatch for {url}: expected {expected}, got {got}; the file was deleted")
    return got, got_size


def _normalise_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not _SHA256_RE.match(value):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return value


class _RetryableError(Exception):
    """A failure worth another attempt (connection, timeout, 5xx, early close)."""


def _copy_local(url: str, part: Path) -> None:
    source = Path(unquote(urlsplit(url).path))
    if not source.is_file():
        raise DownloadError(f"{url} does not exist: expected a file at {source}")
    with open(source, "rb") as src, open(part, "wb") as dst:
        shutil.copyfileobj(src, dst, _CHUNK)


def _fetch_with_retries(
    url: str,
    part: Path,
    size: int | None,
    progress: bool,
    timeout: float | tuple[float, float],
    retries: int,
    backoff: float,
    session: requests.Session | None,
) -> None:
    import requests
    import urllib3

    from restorecli._version import __version__

    own_session = session is None
    if session is None:
        session = requests.Session()
        session.headers["User-Agent"] = f"restorecli/{__version__}"
    try:
        with byte_progress(progress, url.rsplit("/", 1)[-1]) as report:
            attempt = 0
            while True:
                try:
                    _fetch_once(session, url, part, size, timeout, report)
                    return
                except (
                    _RetryableError,
                    requests.exceptions.RequestException,
                    urllib3.exceptions.HTTPError,
                    ConnectionError,
                    TimeoutError,
                ) as error:
                    if attempt >= retries:
                        raise DownloadError(
                            f"download of {url} failed after {attempt + 1} attempt(s): {_describe(error)}"
                        ) from error
                    wait = backoff * (2**attempt)
                    attempt += 1
                    logger.info("download of %s: %s; retry %d in %.1fs", url, _describe(error), attempt, wait)
                    time.sleep(wait)
    finally:
        if own_session:
            session.close()


def _describe(error: BaseException) -> str:
    import requests

    if isinstance(error, requests.exceptions.Timeout) or "timed out" in str(error).lower():
        return f"timed out ({type(error).__name__})"
    return str(error) or type(error).__name__


def _fetch_once(
    session: requests.Session,
    url: str,
    part: Path,
    size: int | None,
    timeout: float | tuple[float, float],
    report: Callable[[int, int | None], None],
) -> None:
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    if size is not None and have == size:
        return  # an earlier run got every byte but stopped before the check
    # identity encoding: byte offsets of a Range request must be offsets into the file itself
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    with session.get(url, stream=True, timeout=timeout, headers=headers) as response:
        status = response.status_code
        if status == 416 and have:
            # Range past the end: the part is complete if the server's total equals it.
            total = _content_range_total(response.headers.get("Content-Range", ""))
            if total == have:
                return
            part.unlink()
            raise _RetryableError(f"server refused to resume at byte {have}; restarting")
        if status >= 500 or status == 429:
            raise _RetryableError(f"HTTP {status} {response.reason}")
        if status >= 400:
            raise DownloadError(f"HTTP {status} {response.reason} for {url}")
        if status == 206:
            start = _content_range_start(response.headers.get("Content-Range", ""))
            if start != have:
                part.unlink()
                raise _RetryableError(f"server resumed at byte {start}, expected {have}; restarting")
            mode = "ab"
        else:
            have, mode = 0, "wb"  # the server ignored Range and sends everything
        length = response.headers.get("Content-Length")
        body = int(length) if length and length.isdigit() else None
        total = have + body if body is not None else size
        report(have, total)
        received = 0
        with open(part, mode) as handle:
            for chunk in _iter_body(response):
                handle.write(chunk)
                received += len(chunk)
                report(have + received, total)
            _sync(handle)
        if body is not None and received < body and not response.headers.get("Content-Encoding"):
            raise _RetryableError(f"connection closed after {received} of {body} bytes")


def _iter_body(response: requests.Response) -> Iterator[bytes]:
    """Yield the body as it arrives, so an interrupted transfer keeps every byte received."""
    read1 = getattr(response.raw, "read1", None)  # urllib3 >= 2
    if read1 is None:
        yield from response.iter_content(_NET_CHUNK)
        return
    while chunk := read1(_NET_CHUNK, decode_content=True):
        yield chunk


def _sync(handle: IO[bytes]) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _content_range_start(header: str) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", header.strip())
    return int(match.group(1)) if match else None


def _content_range_total(header: str) -> int | None:
    match = re.match(r"bytes (?:\*|\d+-\d+)/(\d+)", header.strip())
    return int(match.group(1)) if match else None


@contextmanager
def byte_progress(enabled: bool, label: str) -> Iterator[Callable[[int, int | None], None]]:
    """Yield ``report(done, total)``; draws a bar on stderr when terminals allow (``restorecli.console``)."""
    with progress_bars(enabled=enabled and bars_wanted(), unit="bytes") as bars:
        bar = bars.add(label)
        yield lambda done, total: bars.update(bar, completed=done, total=total)
