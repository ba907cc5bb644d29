"""Official checkpoints from the authors' Google Drive folder, fetched by their official file names.

Drive publishes neither stable file URLs nor checksums. The folder tree named by a manifest entry's
``download_page`` is listed, the entry's file is found by name, downloaded resumably into a staging
folder of the cache, and accepted only when it loads strictly into the named architecture (keys,
shapes, finite values; weights-only loading). Its sha256 is then recorded (trust on first use), and
the stored file is re-hashed on every later use (see :func:`restorecli.hub.cache.cached_weights`).

The transfer goes through gdown, which lists public folders and passes Drive's confirmation page
for large files. :class:`GdownClient` takes its two gdown functions as fields, so tests serve a
local folder tree instead of the network.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from restorecli.download import DEFAULT_TIMEOUT, byte_progress, is_offline, sha256_file
from restorecli.errors import CheckpointError, ChecksumError, DownloadError
from restorecli.filelock import exclusive_lock
from restorecli.hub.cache import DRIVE_ORIGIN, ImportResult, cached_weights, store_checkpoint
from restorecli.hub.manifest import ManifestEntry
from restorecli.paths import models_cache

__all__ = ["DriveClient", "DriveFile", "GdownClient", "DriveRefusedError", "default_client", "fetch_from_drive"]

_STAGING_DIR = "partial"
_RETRIES = 3


@dataclass(frozen=True)
class DriveFile:
    """One file of a Drive folder tree.

    Attributes:
        file_id: Drive's id of the file.
        path: Its path inside the listed folder, ``/``-separated (e.g. ``SR/MaIR_SR_x4.pth``).
    """

    file_id: str
    path: str

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def url(self) -> str:
        return f"https://drive.google.com/uc?id={self.file_id}"


class DriveClient(Protocol):
    """What the hub needs from Google Drive."""

    def list_folder(self, folder_id: str) -> list[DriveFile]:
        """Every file below the folder; raises DownloadError with the reason."""
        ...

    def download(self, file: DriveFile, dest: Path, *, progress: Callable[[int, int | None], None]) -> None:
        """Write the file to ``dest`` whole, or raise; bytes received stay in ``dest``'s folder to resume."""
        ...


class DriveRefusedError(DownloadError):
    """Drive answered, but will not serve the file or folder (quota, permissions, a changed page)."""


@dataclass(frozen=True, kw_only=True)
class GdownClient:
    """:class:`DriveClient` over gdown.

    Attributes:
        list_function: ``gdown.download_folder`` (called with ``skip_download=True``).
        download_function: ``gdown.download`` (called with ``resume=True``).
    """

    list_function: Callable[..., Sequence[Any]]
    download_function: Callable[..., Any]

    def list_folder(self, folder_id: str) -> list[DriveFile]:
        with _translated_errors(f"listing the Google Drive folder {folder_id}"):
            listed = self.list_function(
                id=folder_id, skip_download=True, quiet=True, use_cookies=False, timeout=DEFAULT_TIMEOUT
            )
        return [DriveFile(file_id=item.id, path=str(PurePosixPath(*Path(item.path).parts))) for item in listed]

    def download(self, file: DriveFile, dest: Path, *, progress: Callable[[int, int | None], None]) -> None:
        with _translated_errors(f"downloading {file.path}"):
            self.download_function(
                id=file.file_id,
                output=str(dest),
                quiet=True,
                resume=True,
                use_cookies=False,
                progress=progress,
                timeout=DEFAULT_TIMEOUT,
                retries=_RETRIES,
            )
        if not dest.is_file():
            raise DriveRefusedError(f"{file.path}: Google Drive answered without the file")


def default_client() -> DriveClient:
    """A :class:`GdownClient` on the installed gdown.

    Raises:
        DownloadError: gdown is not installed.
    """
    try:
        import gdown
    except ImportError as error:
        raise DownloadError(
            "downloading from Google Drive needs the gdown package, a dependency of restorecli that is not "
            f"installed here ({error}); install it with `pip install gdown`"
        ) from None
    return GdownClient(list_function=gdown.download_folder, download_function=gdown.download)


@contextmanager
def _translated_errors(doing: str) -> Iterator[None]:
    """Turn gdown's and requests' exceptions into one-line DownloadErrors; Ctrl-C passes through."""
    try:
        yield
    except DownloadError:
        raise
    except Exception as error:
        text = " ".join(str(error).split())
        lowered = text.lower()
        if "too many users" in lowered or "quota" in lowered:
            raise DriveRefusedError(
                f"{doing}: Google Drive refuses for now, too many users have viewed or downloaded the file "
                "recently (its download quota); try again in a few hours"
            ) from None
        if "page structure may have changed" in lowered or "failed to parse" in lowered:
            raise DriveRefusedError(
                f"{doing}: the Google Drive page could not be read (its layout may have changed; a newer gdown "
                "may read it)"
            ) from None
        if _is_network_error(error):
            raise DownloadError(f"{doing}: no connection to Google Drive ({type(error).__name__})") from None
        if type(error).__module__.startswith("gdown"):
            raise DriveRefusedError(f"{doing}: {text[:300]}") from None
        raise


def _is_network_error(error: BaseException) -> bool:
    import requests

    return isinstance(error, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError))


def fetch_from_drive(
    entry: ManifestEntry,
    *,
    expected_sha256: str | None,
    cache_dir: Path | None,
    progress: bool,
    client: DriveClient | None = None,
) -> ImportResult:
    """Download ``entry``'s file from its Drive folder and store it in the cache once it proves itself.

    Args:
        entry: A manifest entry whose ``download_page`` is a Drive folder.
        expected_sha256: Digest the downloaded file must have (``--sha256`` or the manifest's pin);
            None trusts the first download that loads strictly.
        cache_dir: Cache root override.
        progress: Show a byte progress bar on stderr.
        client: Drive access (tests pass a fake); default :func:`default_client`.

    Returns:
        The stored file, its digest and the downloaded file's digest.

    Raises:
        DownloadError: Offline, no gdown, Drive refuses, the file is not in the folder, or the
            transfer broke (its bytes are kept; running again resumes). Every message ends with
            the manual route.
        ChecksumError: The file differs from ``expected_sha256`` (it is deleted).
        CheckpointError: The file is not a checkpoint of ``entry``'s layout (it is deleted).
    """
    folder_id = entry.drive_folder
    if folder_id is None:
        raise DownloadError(entry.obtain_hint())
    manual = entry.manual_route()
    if is_offline():
        raise DownloadError(
            f"{entry.name} is not in the cache and offline mode (RESTORECLI_OFFLINE=1) forbids downloading it from "
            f"Google Drive: unset RESTORECLI_OFFLINE, {manual}"
        )
    models = models_cache(cache_dir)
    staging = models.parent / _STAGING_DIR / entry.name
    staging.mkdir(parents=True, exist_ok=True)
    # A second process fetching the same model waits here, then finds the stored file.
    with exclusive_lock(staging.parent / f"{entry.name}.lock"):
        keep_partial = False
        try:
            hit = cached_weights(entry, cache_dir)
            if hit is not None:
                return ImportResult(entry.name, hit[0], hit[1].sha256, hit[1].source_sha256, replaced=False)
            try:
                drive = client if client is not None else default_client()
                listed = drive.list_folder(folder_id)
            except DownloadError as error:
                raise type(error)(f"{error}; {manual}") from None
            files = _candidates(listed, entry.weights.filename, entry.name, manual)
            rejected: list[str] = []
            for file in files:
                part = staging / entry.weights.filename
                try:
                    with byte_progress(progress, f"{entry.name} ({file.path})") as report:
                        drive.download(file, part, progress=report)
                except DriveRefusedError as error:
                    raise DriveRefusedError(f"{error}; {manual}") from None
                except DownloadError as error:
                    keep_partial = True
                    raise DownloadError(
                        f"{error}; the bytes received are kept and `restore models download {entry.name}` resumes; "
                        f"{manual}"
                    ) from None
                except KeyboardInterrupt:
                    keep_partial = True
                    raise
                digest = sha256_file(part)
                if expected_sha256 is not None and digest != expected_sha256:
                    raise ChecksumError(
                        f"{file.path} from Google Drive has sha256 {digest}, expected {expected_sha256}; "
                        "the file was deleted"
                    )
                try:
                    return store_checkpoint(
                        part, entry, cache_dir=cache_dir, origin=DRIVE_ORIGIN, url=file.url, force=True
                    )
                except CheckpointError as error:
                    rejected.append(f"{file.path}: {error}")
                    part.unlink(missing_ok=True)
            raise CheckpointError(
                f"the Google Drive file for {entry.name} does not load into its network, so it was deleted "
                f"({'; '.join(rejected)}); {manual}"
            )
        finally:
            if not keep_partial:
                shutil.rmtree(staging, ignore_errors=True)


def _candidates(files: list[DriveFile], filename: str, name: str, manual: str) -> list[DriveFile]:
    """The folder's files called ``filename`` (exactly, else ignoring case), shortest path first."""
    exact = [f for f in files if f.name == filename]
    found = exact or [f for f in files if f.name.lower() == filename.lower()]
    if not found:
        listed = ", ".join(sorted(f.path for f in files)[:20]) or "nothing"
        more = f" and {len(files) - 20} more" if len(files) > 20 else ""
        raise DriveRefusedError(
            f"{filename} ({name}) is not in the Google Drive folder (it holds {listed}{more}); {manual}"
        )
    return sorted(found, key=lambda f: (f.path.count("/"), f.path))
