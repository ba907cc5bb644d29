"""Typed errors of the library. The CLI prints these as one line; anything else is a bug.

Every message says what was expected and what was given.
"""

from __future__ import annotations


class RestoreError(Exception):
    """Base class of every error the CLI formats as a one-line message."""

    exit_code: int = 1


class UsageError(RestoreError):
    """Bad command-line usage that is only detectable after parsing (exit code 2)."""

    exit_code = 2


class ConfigError(RestoreError):
    """Unknown, missing or ill-typed configuration key or value."""


class UnknownModelError(RestoreError):
    """A model name that is not in the model table or manifest."""


class CheckpointError(RestoreError):
    """A checkpoint file that cannot be read or does not fit the architecture."""


class BackendUnavailableError(RestoreError):
    """An explicitly requested compute backend (scan kernel, device, precision) is not usable here."""


class ImageReadError(RestoreError):
    """An input that is missing, not an image, corrupt or of an unsupported mode."""


class ImageTooLargeError(ImageReadError):
    """An input whose header declares more pixels than the limit (checked before decoding)."""


class ImageWriteError(RestoreError):
    """An output that cannot be written (permissions, format, would overwrite an input)."""


class DownloadError(RestoreError):
    """A network transfer that failed (HTTP error, timeout, offline mode)."""


class ChecksumError(DownloadError):
    """A file whose sha256 or size differs from the pinned one."""


class TrainingError(RestoreError):
    """Training cannot go on (the loss is no longer a finite number)."""


class OutOfMemoryError(RestoreError):
    """The device ran out of memory even at the smallest tile size."""
