"""Image files in and out: the only place where dtype, range and layout conversions happen.

Reading goes through ``cv2.imdecode`` on the file's bytes (safe for Unicode paths on every OS)
with ``IMREAD_UNCHANGED`` so that 16-bit samples, grey and alpha survive. That flag makes OpenCV
ignore the EXIF orientation of JPEG, PNG and WebP files, so the orientation is read here and
applied explicitly (OpenCV's TIFF decoder applies it itself; that is detected, not assumed).
The embedded ICC colour profile of a PNG, JPEG, WebP or TIFF file is kept on the image and
written into PNG, JPEG and WebP outputs (``restorecli.icc``; other outputs say they left it out); EXIF is not carried over, since the pixels
are already in display orientation.

Before decoding, the file's header is read (``restorecli.headers``): a file over the pixel
limit (``max_pixels``, default ``DEFAULT_MAX_PIXELS`` or ``RESTORECLI_MAX_PIXELS``) or with a
cut or broken container is refused there, and the number of pages or frames is noted (only
the first is decoded). What the codecs print themselves (libpng's "Not enough image data",
libjpeg's "Corrupt JPEG data") never reaches the terminal: OpenCV's log is silenced and the
process's stderr is captured while a codec runs; the lines end up in our error message, in a
note on a damaged JPEG that still decoded, or in the DEBUG log.

Writing encodes in memory and then writes a temporary file in the destination folder that is
renamed over the target, so a crash or Ctrl-C never leaves a partial output.

The module is longer than most on purpose: it is the one place where pixels change dtype, range
or layout, and reading, the 8-bit benchmark conventions and writing share its format tables.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import struct
import sys
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from restorecli import headers, icc
from restorecli.errors import ConfigError, ImageReadError, ImageTooLargeError, ImageWriteError, RestoreError

if TYPE_CHECKING:
    from collections.abc import Iterator

    import torch

FORMAT_BY_EXTENSION = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".jpe": "jpeg",
    ".webp": "webp",
    ".bmp": "bmp",
    ".dib": "bmp",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".gif": "gif",
}
"""Extensions read as images, and the format each one names."""

EXTENSION_BY_FORMAT = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "bmp": ".bmp", "tiff": ".tif"}
"""The formats written, and the extension each is written with (GIF is read, not written)."""
FORMATS_16_BIT = frozenset({"png", "tiff"})
FORMATS_WITH_ALPHA = frozenset({"png", "webp", "tiff", "bmp"})
FORMAT_NAMES = "PNG, JPEG, WebP, BMP, TIFF or GIF"
DEFAULT_QUALITY = 95
"""JPEG and WebP quality of written files."""

DEFAULT_MAX_PIXELS = 1_000_000_000
"""Largest image read (width x height, from the header): 1 Gpx. Decoded, that is 3 GB as 8-bit
RGB and 8 GB as 16-bit RGBA, and the network's float copies take several times more; a header
declaring more is far more often a broken or hostile file than a real photograph."""
ENV_MAX_PIXELS = "RESTORECLI_MAX_PIXELS"

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Image:
    """A decoded image in display orientation.

    Attributes:
        color: (H, W) grey or (H, W, 3) RGB samples, uint8 or uint16.
        alpha: (H, W) alpha samples of the same dtype, or None.
        source_format: ``png|jpeg|webp|bmp|tiff`` of the file it came from ("" if made in memory).
        orientation: EXIF orientation (1-8) that was applied while reading; 1 = none.
        icc_profile: The embedded ICC colour profile of the file, or None (none, unreadable, or
            a format whose profile is not read: BMP).
        frames: Pages or frames in the file; only the first was decoded.
        frame_unit: ``page`` (TIFF) or ``frame`` (animations).
        decoder_notes: What reading changed or lost: the decoder's words on a damaged JPEG file it
            still decoded, floating-point samples made 16-bit, an alpha channel it could not read.
    """

    color: np.ndarray
    alpha: np.ndarray | None = None
    source_format: str = ""
    orientation: int = 1
    icc_profile: bytes | None = None
    frames: int = 1
    frame_unit: str = "frame"
    decoder_notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.color.dtype not in (np.uint8, np.uint16):
            raise TypeError(f"image samples must be uint8 or uint16, got {self.color.dtype}")
        if self.color.ndim not in (2, 3) or (self.color.ndim == 3 and self.color.shape[2] != 3):
            raise ValueError(f"color must be (H, W) or (H, W, 3), got {self.color.shape}")
        if self.alpha is not None and (
            self.alpha.shape != self.color.shape[:2] or self.alpha.dtype != self.color.dtype
        ):
            raise ValueError("alpha must be (H, W) with the dtype of color")
        if self.icc_profile is not None and not isinstance(self.icc_profile, bytes):
            raise TypeError(f"icc_profile must be bytes or None, got {type(self.icc_profile).__name__}")

    @property
    def height(self) -> int:
        """Rows."""
        return int(self.color.shape[0])

    @property
    def width(self) -> int:
        """Columns."""
        return int(self.color.shape[1])

    @property
    def bit_depth(self) -> int:
        """8 or 16."""
        return 16 if self.color.dtype == np.uint16 else 8

    @property
    def is_grey(self) -> bool:
        """True for single-channel colour (with or without alpha)."""
        return self.color.ndim == 2

    @property
    def mode(self) -> str:
        """``L``, ``LA``, ``RGB`` or ``RGBA``."""
        return ("L" if self.is_grey else "RGB") + ("A" if self.alpha is not None else "")


def sniff_format(head: bytes) -> str | None:
    """Image format from a file's first bytes (16 are enough), or None if not one we read."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def _silence_opencv() -> None:
    """OpenCV logs decoder warnings on stderr by itself; our errors say what went wrong instead."""
    import cv2

    with contextlib.suppress(AttributeError):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def read_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> Image:
    """Read an image file (the first page or frame of a multi-page or animated one).

    Args:
        path: PNG, JPEG, WebP, BMP, TIFF or GIF file; 8 or 16 bits (or floating-point TIFF,
            read as 16-bit with 0..1 as black..white); grey, RGB or RGBA.
        max_pixels: Refuse a file whose header declares more pixels; None: ``RESTORECLI_MAX_PIXELS``
            if set, else ``DEFAULT_MAX_PIXELS``.

    Returns:
        The image, EXIF orientation applied, with its ICC profile if it has a readable one (a
        malformed profile is ignored and logged at DEBUG level) and its page or frame count.

    Raises:
        ImageTooLargeError: The header declares more than ``max_pixels`` pixels.
        ImageReadError: Missing, empty, not an image, truncated or corrupt, or an unsupported mode.
        ConfigError: ``RESTORECLI_MAX_PIXELS`` is not a pixel count.
    """
    import cv2

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file (expected an image file)") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a folder, expected an image file") from None
    except OSError as error:
        raise ImageReadError(f"{path}: cannot read: {error.strerror or error} (expected a readable image file)") from None
    if not data:
        raise ImageReadError(f"{path}: file is empty (0 bytes), expected a {FORMAT_NAMES} image")
    fmt = sniff_format(data[:16])
    if fmt is None:
        named = FORMAT_BY_EXTENSION.get(path.suffix.lower())
        what = f"named {path.suffix} but its content is" if named else "content is"
        raise ImageReadError(f"{path}: not an image: {what} not {FORMAT_NAMES} (starts with {data[:8]!r})")
    try:
        header = headers.read_header(data, fmt)
    except headers.HeaderError as error:
        raise ImageReadError(f"{path}: cannot decode this {fmt.upper()} file: it is truncated or corrupt ({error})") from None
    limit = max_pixels_from_env() if max_pixels is None else max_pixels
    if header.pixels > limit:
        raise ImageTooLargeError(
            f"{path}: declares {header.width}×{header.height} px ({format_pixels(header.pixels)}), over the limit "
            f"of {format_pixels(limit)}; raise it with --max-pixels or {ENV_MAX_PIXELS}"
        )

    _silence_opencv()
    buffer = np.frombuffer(data, dtype=np.uint8)
    with codec_messages() as said:
        try:
            decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
        except cv2.error:
            decoded = None
    if decoded is None or decoded.size == 0:
        reason = f" ({_CODEC_PREFIX.sub('', said[0])})" if said else ""
        if header.pixels > headers.OPENCV_PIXEL_CAP and not said:
            reason = f" (or over OpenCV's own limit of {headers.OPENCV_PIXEL_CAP} px: set OPENCV_IO_MAX_IMAGE_PIXELS)"
        raise ImageReadError(f"{path}: cannot decode this {fmt.upper()} file: it is truncated or corrupt{reason}")
    notes: list[str] = []
    if decoded.dtype in (np.float32, np.float64):
        decoded, note = _float_to_16_bit(decoded, path, fmt)
        notes.append(note)
    if decoded.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(f"{path}: expected 8- or 16-bit integer or floating-point samples, got {decoded.dtype} {fmt.upper()}")

    said = [_CODEC_PREFIX.sub("", line) for line in said]
    if said:
        _log.debug("%s: the %s decoder said: %s", path, fmt.upper(), "; ".join(said))
    if fmt == "jpeg":
        # libjpeg decodes damaged data with grey blocks and says so: the only warning worth a note
        # (PNG damage fails its checksums; other warnings are about metadata)
        notes += [f"decoder: {line}" for line in said[:3]]
    orientation = exif_orientation(data, fmt)
    if orientation != 1 and not (fmt == "tiff" and _tiff_decoder_orients()):
        decoded = apply_orientation(decoded, orientation)
    color, alpha = _split_channels(decoded, path)
    if header.grey_alpha and color.ndim == 3:
        # OpenCV expands a grey+alpha PNG to BGRA: read as grey, the restored output stays grey
        color = np.ascontiguousarray(color[..., 0])
    elif header.grey_alpha and alpha is None:
        notes.append(f"alpha dropped (OpenCV decodes this grey {fmt.upper()} without its transparency)")
    try:
        profile = icc.find_profile(data, fmt)
    except icc.ProfileError as error:
        _log.debug("%s: ignoring its ICC profile: %s", path, error)
        profile = None
    return Image(
        color=color,
        alpha=alpha,
        source_format=fmt,
        orientation=orientation,
        icc_profile=profile,
        frames=header.frames,
        frame_unit=header.frame_unit,
        decoder_notes=tuple(notes),
    )


def _float_to_16_bit(decoded: np.ndarray, path: Path, fmt: str) -> tuple[np.ndarray, str]:
    """Floating-point samples (32-bit TIFF from HDR and scientific tools) as 16-bit integers.

    Float images put black at 0 and white at 1; brighter values cannot be restored into an 8-
    or 16-bit output, so they are clipped, and the note says how many were.
    """
    if not np.isfinite(decoded).all():
        raise ImageReadError(f"{path}: expected finite samples, got NaN or infinite values in a floating-point {fmt.upper()}")
    outside = float(np.mean((decoded < 0.0) | (decoded > 1.0)))
    converted = np.round(np.clip(decoded, 0.0, 1.0) * 65535.0).astype(np.uint16)  # as quantize_to_uint8
    note = f"{decoded.dtype} samples read as 16-bit"
    if outside > 0:
        note += f" ({outside:.1%} of them were outside 0..1 and were clipped)"
    return converted, note


# ---------------------------------------------------------------------------------------------
# pixel limit and codec messages

_CODEC_PREFIX = re.compile(r"^lib\w+ (?:error|warning): ")
"""The library's own tag on a captured line ("libpng error: "): our message names the file instead."""
_PIXEL_COUNT = re.compile(r"(?i)^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmg]?)(?:px)?\s*$")


def parse_pixel_count(text: str) -> int:
    """A pixel count written as ``50000000``, ``5e7``, ``50M``, ``1G`` or ``1.5Gpx`` (K/M/G are 10^3/6/9).

    Raises:
        ValueError: Not such a count, or not positive.
    """
    match = _PIXEL_COUNT.match(text)
    if match is None:
        raise ValueError(f"expected a pixel count such as 50000000, 50M or 1G, got {text!r}")
    value = float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2).lower()]
    if value < 1:
        raise ValueError(f"expected a positive pixel count, got {text!r}")
    return int(value)


def max_pixels_from_env() -> int:
    """The pixel limit: ``RESTORECLI_MAX_PIXELS`` when set, else ``DEFAULT_MAX_PIXELS``.

    Raises:
        ConfigError: The variable is set but is not a pixel count.
    """
    text = os.environ.get(ENV_MAX_PIXELS, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        return parse_pixel_count(text)
    except ValueError as error:
        raise ConfigError(f"{ENV_MAX_PIXELS}: {error}") from None


def format_pixels(count: int) -> str:
    """``10 Gpx``, ``1.02 Gpx``, ``250 Mpx``, ``4.1 kpx``, ``640 px``: three significant digits."""
    for unit, size in (("Gpx", 1e9), ("Mpx", 1e6), ("kpx", 1e3)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{count} px"


_codec_lock = threading.Lock()


@contextlib.contextmanager
def codec_messages() -> Iterator[list[str]]:
    """Capture what native code writes to the process's stderr (fd 2) while the block runs.

    libpng, libjpeg and libtiff print warnings and errors straight to fd 2, past Python and
    past OpenCV's log level. The yielded list receives those lines when the block ends. One
    block runs at a time; where fd 2 cannot be duplicated, nothing is captured.
    """
    said: list[str] = []
    with _codec_lock:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.flush()  # what Python wrote before goes out first
        try:
            saved = os.dup(2)
        except OSError:
            yield said
            return
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield said
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                text = sink.read(64 * 1024).decode("utf-8", errors="replace")
                said.extend(line.strip() for line in text.splitlines() if line.strip())


@functools.lru_cache(maxsize=1)
def _tiff_decoder_orients() -> bool:
    """Whether this OpenCV's TIFF decoder applies the Orientation tag itself.

    OpenCV 5 does, even under IMREAD_IGNORE_ORIENTATION, so it cannot be switched off; decoding a
    hand-made mirrored 2x1 TIFF once tells which behaviour this build has.
    """
    import cv2

    # 2x1 8-bit grey, samples (0, 255), Orientation 2 (mirrored): an orienting decoder gives (255, 0).
    shorts = [(256, 2), (257, 1), (258, 8), (259, 1), (262, 1), (274, 2), (277, 1), (278, 1)]
    longs = [(273, 8), (279, 2)]  # strip offset, strip byte count
    entries = sorted([(tag, struct.pack("<HHIHH", tag, 3, 1, v, 0)) for tag, v in shorts]
                     + [(tag, struct.pack("<HHII", tag, 4, 1, v)) for tag, v in longs])  # fmt: skip
    data = b"II*\x00" + struct.pack("<I", 12) + bytes([0, 255, 0, 0]) + struct.pack("<H", len(entries))
    data += b"".join(entry for _, entry in entries) + struct.pack("<I", 0)
    _silence_opencv()
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return decoded is not None and int(decoded.reshape(-1)[0]) == 255


def _split_channels(decoded: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """OpenCV's BGR(A) / grey(+alpha) layout -> (RGB or grey colour, alpha)."""
    import cv2

    if decoded.ndim == 2:
        return np.ascontiguousarray(decoded), None
    channels = decoded.shape[2]
    if channels == 1:
        return np.ascontiguousarray(decoded[..., 0]), None
    if channels == 2:
        return np.ascontiguousarray(decoded[..., 0]), np.ascontiguousarray(decoded[..., 1])
    if channels == 3:
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), None
    if channels == 4:
        return cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGB), np.ascontiguousarray(decoded[..., 3])
    raise ImageReadError(f"{path}: expected 1 to 4 channels (grey, grey+alpha, RGB, RGBA), got {channels}")


# ---------------------------------------------------------------------------------------------
# EXIF orientation


def exif_orientation(data: bytes, fmt: str) -> int:
    """EXIF orientation tag (1-8) of an encoded image; 1 when absent or unreadable."""
    try:
        if fmt == "tiff":
            blob = data
        elif fmt == "jpeg":
            blob = _jpeg_exif(data)
        elif fmt == "png":
            blob = _png_exif(data)
        elif fmt == "webp":
            blob = _webp_exif(data)
        else:
            blob = None
        return _tiff_orientation(blob) if blob else 1
    except (struct.error, IndexError, ValueError):
        return 1


def _jpeg_exif(data: bytes) -> bytes | None:
    for segment in icc.jpeg_segments(data):
        if segment.marker == 0xE1 and segment.body.startswith(b"Exif\x00\x00"):
            return segment.body[6:]
    return None


def _png_exif(data: bytes) -> bytes | None:
    return next((chunk.body for chunk in icc.png_chunks(data) if chunk.kind == b"eXIf"), None)


def _webp_exif(data: bytes) -> bytes | None:
    blob = next((chunk.body for chunk in icc.riff_chunks(data) if chunk.kind == b"EXIF"), None)
    return blob[6:] if blob is not None and blob.startswith(b"Exif\x00\x00") else blob


def _tiff_orientation(blob: bytes) -> int:
    """Orientation (tag 0x0112) of IFD0 of a TIFF-structured blob."""
    if blob[:2] == b"II":
        order = "<"
    elif blob[:2] == b"MM":
        order = ">"
    else:
        return 1
    (ifd,) = struct.unpack(order + "I", blob[4:8])
    (count,) = struct.unpack(order + "H", blob[ifd : ifd + 2])
    for i in range(count):
        entry = blob[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag == 0x0112 and kind == 3:  # SHORT
            (value,) = struct.unpack(order + "H", entry[8:10])
            return value if 1 <= value <= 8 else 1
    return 1


def apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels (H, W[, C]) into display orientation for an EXIF orientation 1-8."""
    if orientation == 2:
        pixels = pixels[:, ::-1]
    elif orientation == 3:
        pixels = pixels[::-1, ::-1]
    elif orientation == 4:
        pixels = pixels[::-1]
    elif orientation == 5:
        pixels = pixels.swapaxes(0, 1)
    elif orientation == 6:
        pixels = pixels[::-1].swapaxes(0, 1)  # 90° clockwise
    elif orientation == 7:
        pixels = pixels[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:
        pixels = pixels[:, ::-1].swapaxes(0, 1)  # 90° counter-clockwise
    return np.ascontiguousarray(pixels)


# ---------------------------------------------------------------------------------------------
# tensors


def image_to_tensor(image: Image) -> torch.Tensor:
    """Colour of an image as a (1, 3, H, W) float32 RGB tensor in [0, 1] (grey is replicated)."""
    import torch

    peak = 65535.0 if image.bit_depth == 16 else 255.0
    color = image.color if not image.is_grey else np.repeat(image.color[..., None], 3, axis=2)
    tensor = torch.from_numpy(np.ascontiguousarray(color.transpose(2, 0, 1))).unsqueeze(0)
    return tensor.to(torch.float32).div_(peak)


def tensor_to_image(tensor: torch.Tensor, like: Image) -> Image:
    """A restored tensor as an image with the depth, colour mode and alpha of its input.

    Args:
        tensor: (1, 3, sH, sW) float RGB, any range (clamped to [0, 1]); consumed (modified in place).
        like: The input image; its bit depth, grey/colour mode and ICC profile are kept, its alpha
            is resized to the output size (bicubic) or passed through when the size is unchanged.

    Returns:
        The output image.
    """
    import cv2
    import torch

    if tensor.dim() != 4 or tensor.shape[:2] != (1, 3):
        raise ValueError(f"expected a (1, 3, H, W) tensor, got shape {tuple(tensor.shape)}")
    dtype = np.uint16 if like.bit_depth == 16 else np.uint8
    peak = 65535.0 if like.bit_depth == 16 else 255.0
    pixels = tensor[0].float()
    if like.is_grey:
        pixels = pixels.mean(dim=0, keepdim=True)  # the input was replicated to 3 equal channels
    pixels = pixels.clamp_(0.0, 1.0).mul_(peak).round_()
    pixels = pixels.to(torch.int32 if dtype == np.uint16 else torch.uint8)
    color = pixels.permute(1, 2, 0).numpy().astype(dtype, copy=False)
    color = np.ascontiguousarray(color[..., 0] if like.is_grey else color)
    alpha = like.alpha
    if alpha is not None and alpha.shape != color.shape[:2]:
        alpha = cv2.resize(alpha, (color.shape[1], color.shape[0]), interpolation=cv2.INTER_CUBIC)
    return Image(color=color, alpha=alpha, source_format=like.source_format, icc_profile=like.icc_profile)


# ---------------------------------------------------------------------------------------------
# 8-bit arrays for scoring and training (the benchmarks' conventions)


def read_rgb8(path: str | os.PathLike[str], *, grey: bool = False) -> np.ndarray:
    """Read an image as uint8 samples: (H, W, 3) RGB, or (H, W, 1) luma when ``grey``.

    A grey file gets R = G = B, as the benchmark code (OpenCV ``IMREAD_COLOR``) does; alpha is
    dropped; 16-bit samples are rounded to 8 bits (:func:`to_8_bit`). With ``grey`` a colour file
    is converted with OpenCV's BT.601 weights.

    Raises:
        ImageReadError: Missing, undecodable or unsupported file.
    """
    color = read_image(path).color
    if color.dtype == np.uint16:
        color = to_8_bit(color)
    if grey:
        if color.ndim == 3:
            import cv2

            color = cv2.cvtColor(color, cv2.COLOR_RGB2GRAY)
        return color[..., None]
    return np.repeat(color[..., None], 3, axis=2) if color.ndim == 2 else color


def to_8_bit(samples: np.ndarray) -> np.ndarray:
    """16-bit samples rounded to the nearest 8-bit value (65535 -> 255)."""
    return ((samples.astype(np.uint32) + 128) // 257).astype(np.uint8)


def quantize_to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] as uint8, as the benchmark code saves it: clamp, x255, round.

    Rounding is half to even (``np.round``), bit-identical to ``torch.round`` on the same values.
    """
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# writing


def output_format(path: str | os.PathLike[str]) -> str:
    """Format named by an output path's extension.

    Raises:
        ImageWriteError: The extension names no format we write.
    """
    suffix = Path(path).suffix.lower()
    fmt = FORMAT_BY_EXTENSION.get(suffix)
    if fmt not in EXTENSION_BY_FORMAT:
        written = sorted(ext for ext, name in FORMAT_BY_EXTENSION.items() if name in EXTENSION_BY_FORMAT)
        raise ImageWriteError(f"{path}: expected an extension of {', '.join(written)}, got {suffix!r}")
    return fmt


def fit_to_format(image: Image, fmt: str) -> tuple[Image, list[str]]:
    """Reduce an image to what a format can hold; returns the image and a note per loss.

    16-bit becomes 8-bit outside PNG/TIFF. Alpha cannot be stored in JPEG; callers that must keep
    it choose PNG instead (see ``restorecli.batch``); here it is dropped with a note.
    """
    notes: list[str] = []
    if image.bit_depth == 16 and fmt not in FORMATS_16_BIT:
        image = replace(
            image,
            color=to_8_bit(image.color),
            alpha=None if image.alpha is None else to_8_bit(image.alpha),
        )
        notes.append(f"16-bit input written as 8-bit ({fmt.upper()} holds 8 bits)")
    if image.alpha is not None and fmt not in FORMATS_WITH_ALPHA:
        image = replace(image, alpha=None)
        notes.append(f"alpha dropped ({fmt.upper()} has no alpha)")
    return image, notes


def encode_image(image: Image, fmt: str, *, quality: int = DEFAULT_QUALITY) -> tuple[bytes, list[str]]:
    """Encode an image as ``fmt`` in memory.

    The image's ICC profile goes into PNG, JPEG and WebP files; elsewhere it is left out with a note.

    Returns:
        The file's bytes and notes on anything the format could not hold.
    """
    import cv2

    image, notes = fit_to_format(image, fmt)
    if image.is_grey:
        pixels = image.color if image.alpha is None else np.dstack([image.color] * 3 + [image.alpha])
    elif image.alpha is None:
        pixels = cv2.cvtColor(image.color, cv2.COLOR_RGB2BGR)
    else:
        pixels = np.dstack([cv2.cvtColor(image.color, cv2.COLOR_RGB2BGR), image.alpha])
    params: list[int] = []
    if fmt == "jpeg":
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    elif fmt == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, quality]
    _silence_opencv()
    try:
        with codec_messages():
            ok, buffer = cv2.imencode(EXTENSION_BY_FORMAT[fmt], pixels, params)
    except cv2.error as error:
        raise ImageWriteError(f"cannot encode a {image.mode} {image.bit_depth}-bit image as {fmt.upper()}: {error}") from None
    if not ok:
        raise ImageWriteError(f"cannot encode a {image.mode} {image.bit_depth}-bit image as {fmt.upper()}")
    data = buffer.tobytes()
    if image.icc_profile is not None:
        problem = icc.unfit_reason(image.icc_profile, fmt, grey=pixels.ndim == 2)
        if problem is None:
            data = icc.embed_profile(data, fmt, image.icc_profile)
        else:
            notes.append(problem)
    return data, notes


def write_image(
    path: str | os.PathLike[str],
    image: Image,
    *,
    overwrite: bool = False,
    quality: int = DEFAULT_QUALITY,
) -> list[str]:
    """Write an image atomically, in the format named by the path's extension.

    Args:
        path: Output file; its folder is created if missing.
        image: The image.
        overwrite: Replace an existing file; otherwise an existing file is an error.
        quality: JPEG/WebP quality.

    Returns:
        Notes on anything the format could not hold (bit depth, alpha, ICC profile).

    Raises:
        ImageWriteError: Unknown extension, existing file, unwritable folder, encoder failure.
    """
    path = Path(path)
    data, notes = encode_image(image, output_format(path), quality=quality)
    write_bytes_atomic(path, data, overwrite=overwrite)
    return notes


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False) -> None:
    """Write bytes through a temporary file in the same folder, then rename it over ``path``.

    The temporary file is removed on any failure, Ctrl-C and the other stop signals included
    (``restorecli.interrupts``), so no partial file remains.

    Raises:
        ImageWriteError: Existing file without ``overwrite``, a name too long for the folder's
            file system, or the folder is not writable.
    """
    with atomic_output(path, overwrite=overwrite) as temporary:
        temporary.write_bytes(data)


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str], *, overwrite: bool = False, error: type[RestoreError] = ImageWriteError
) -> Iterator[Path]:
    """A temporary file beside ``path`` that is renamed over it when the block ends normally.

    The block writes the temporary file (by its path: ``torch.save``, ``Path.write_bytes``);
    on any exception, Ctrl-C included, it is removed instead, and an ``OSError`` becomes an
    ``error`` (``ImageWriteError`` unless the caller writes something else, e.g. a checkpoint).
    Its name is short (see :func:`temporary_prefix`), so it fits the folder even when ``path``'s
    own name is long. This is the one atomic writer of the package.

    Raises:
        ImageWriteError: (or ``error``) ``path`` is a folder, exists without ``overwrite``, has a name over the
            folder's limit (:func:`check_name_length`), or the folder is not writable.
    """
    from restorecli import interrupts

    path = Path(path)
    check_name_length(path, error=error)  # first: the system refuses even to look up a name over its limit
    if path.is_dir():
        raise error(f"{path}: is a folder, expected an output file path")
    if not overwrite and path.exists():
        raise error(f"{path}: exists (pass --overwrite to replace it)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with interrupts.deferred():  # no signal between creating the file and knowing its name
            handle, name = tempfile.mkstemp(
                prefix=temporary_prefix(path.name, name_limit(path.parent)), suffix=TEMPORARY_SUFFIX, dir=path.parent
            )
            os.close(handle)
    except OSError as failure:
        # a file where a folder of the path must be: the system's "File exists" does not name it
        blocker = next((p for p in (path.parent, *path.parent.parents) if p.exists()), path.parent)
        reason = failure.strerror or failure if blocker.is_dir() else f"{blocker} is a file, not a folder"
        raise error(f"{path.parent}: cannot write into this folder: {reason}") from None
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; an output is an ordinary file
        os.replace(temporary, path)
    except BaseException as failure:
        with contextlib.suppress(OSError):
            temporary.unlink()
        if isinstance(failure, OSError):
            raise error(f"{path}: cannot write: {failure.strerror or failure}") from None
        raise


TEMPORARY_SUFFIX = ".part"
_TEMPORARY_HEAD = 32
"""Bytes of the output name kept in its temporary name (enough to tell whose it is)."""
_MKSTEMP_RANDOM = 8


def name_limit(folder: str | os.PathLike[str]) -> int:
    """Longest file name, in bytes, that a folder's file system takes.

    ``PC_NAME_MAX`` of the folder (or of its nearest existing parent, when it is still to be
    made); 255, the common limit, where the system does not say.
    """
    probe = Path(folder)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        limit = os.pathconf(probe, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # AttributeError: no pathconf (Windows)
        return 255
    return limit if limit > 0 else 255


def check_name_length(
    path: str | os.PathLike[str], *, hint: str = "use a shorter name", error: type[RestoreError] = ImageWriteError
) -> None:
    """Refuse an output whose own name is longer than its folder's file system allows.

    Raises:
        ImageWriteError: (or ``error``) The name is over the limit (the message names both lengths
            and ``hint``).
    """
    path = Path(path)
    length, limit = len(os.fsencode(path.name)), name_limit(path.parent)
    if length > limit:
        raise error(
            f"{path}: the output name is {length} bytes long, over the file system's limit of {limit} bytes; {hint}"
        )


def temporary_prefix(name: str, limit: int = 255) -> str:
    """``.<start of name>.``: with mkstemp's 8 random characters and ``.part`` it fits ``limit``.

    At most 32 bytes of the name are kept, cut at a character boundary.
    """
    room = min(_TEMPORARY_HEAD, limit - len(".." + TEMPORARY_SUFFIX) - _MKSTEMP_RANDOM)
    head = ""
    for char in name:
        if len(os.fsencode(head + char)) > room:
            break
        head += char
    return f".{head}." if head else "."


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
