"""Image headers read without decoding: size and frame count, and a check that the file is whole.

``restorecli.io`` reads these before it hands a file to OpenCV, for three reasons: the pixel
limit is checked on the declared size, before any memory is spent on decoding; the number of
pages or frames is known (OpenCV decodes only the first); and a file that is cut short or
whose container is broken is refused here, so the codecs never see it and never print their
own messages. The checks follow the container specifications and stop at the first frame's
data; what they cannot see (damaged compressed data inside a whole container) is left to the
decoder.

* PNG (ISO/IEC 15948): ``IHDR`` first, chunks that fit the file, ``IEND`` at the end; APNG's
  ``acTL`` gives the frame count.
* JPEG (ITU-T T.81): a start-of-frame segment before the first scan, and an end-of-image
  marker after it (entropy-coded data cannot hold one, so none means the file was cut).
* WebP (RIFF): the RIFF size fits the file; ``VP8 ``/``VP8L`` bitstream header or ``VP8X``
  canvas; ``ANMF`` chunks are the frames of an animation.
* BMP: ``BITMAPCOREHEADER`` or a later info header; uncompressed pixel rows that fit the file.
* TIFF (TIFF 6.0): IFD0's ImageWidth/ImageLength and strip or tile extents that fit the file;
  the IFD chain counts the pages (reduced-resolution images such as thumbnails not counted).
* GIF (GIF89a): logical screen size; image descriptors counted up to the trailer.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from restorecli import icc

__all__ = ["OPENCV_PIXEL_CAP", "Header", "HeaderError", "lift_decoder_pixel_cap", "read_header"]

OPENCV_PIXEL_CAP = 1 << 30
"""OpenCV's own limit on decoded pixels (``OPENCV_IO_MAX_IMAGE_PIXELS``, read once when it loads)."""

_MAX_PAGES = 10_000
"""IFDs (TIFF) or blocks (GIF) walked at most: a loop or a hostile file cannot keep us busy."""


class HeaderError(ValueError):
    """A header or container that is truncated or malformed; the message says what is wrong."""


@dataclass(frozen=True)
class Header:
    """What a file declares about itself.

    Attributes:
        width: Columns of the first page or frame (the canvas of an animation).
        height: Rows.
        frames: Pages (TIFF) or frames (animated PNG, WebP, GIF); 1 for a still image.
        frame_unit: ``page`` or ``frame``: how ``frames`` is counted.
        grey_alpha: The file stores grey samples with transparency (PNG colour type 4 or a grey
            PNG with a tRNS colour key, a two-sample grey TIFF); OpenCV decodes the first as BGRA,
            the others as grey alone.
    """

    width: int
    height: int
    frames: int = 1
    frame_unit: str = "frame"
    grey_alpha: bool = False

    @property
    def pixels(self) -> int:
        """Width times height."""
        return self.width * self.height


def read_header(data: bytes, fmt: str) -> Header:
    """Size and frame count of an encoded image, after checking that its container is whole.

    Args:
        data: The whole file.
        fmt: ``png``, ``jpeg``, ``webp``, ``bmp``, ``tiff`` or ``gif`` (see ``io.sniff_format``).

    Returns:
        The header.

    Raises:
        HeaderError: Truncated, malformed, or declaring a zero size.
    """
    parser = {"png": _png, "jpeg": _jpeg, "webp": _webp, "bmp": _bmp, "tiff": _tiff, "gif": _gif}[fmt]
    try:
        header = parser(data)
    except HeaderError:
        raise
    except (struct.error, IndexError, ValueError):  # a field that lies past the end, or nonsense
        raise HeaderError("its header is cut short or malformed") from None
    if header.width <= 0 or header.height <= 0:
        raise HeaderError(f"declares a size of {header.width}x{header.height} px")
    return header


def _png(data: bytes) -> Header:
    chunks = list(icc.png_chunks(data))
    if not chunks or chunks[0].kind != b"IHDR" or len(chunks[0].body) != 13:
        raise HeaderError("no IHDR chunk where the PNG header must be")
    width, height = struct.unpack(">II", chunks[0].body[:8])
    if chunks[-1].end > len(data):
        raise HeaderError(f"cut short inside its {chunks[-1].kind.decode('latin-1')!r} chunk")
    if chunks[-1].kind != b"IEND":
        raise HeaderError("cut short: no IEND chunk at the end")
    if not any(chunk.kind == b"IDAT" for chunk in chunks):
        raise HeaderError("no image data (IDAT chunk)")
    frames = next((struct.unpack(">I", c.body[:4])[0] for c in chunks if c.kind == b"acTL" and len(c.body) >= 4), 1)
    # colour type 4, or grey (0) made transparent by a tRNS colour key
    colour_type = chunks[0].body[9]
    grey_alpha = colour_type == 4 or (colour_type == 0 and any(chunk.kind == b"tRNS" for chunk in chunks))
    return Header(width, height, max(1, frames), grey_alpha=grey_alpha)


# SOF0-3, 5-7, 9-11, 13-15: the markers whose segment holds the frame size (C4, C8, CC are not SOFs)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg(data: bytes) -> Header:
    frame = next((segment for segment in icc.jpeg_segments(data) if segment.marker in _JPEG_SOF), None)
    if frame is None or len(frame.body) < 6:
        raise HeaderError("no frame header (SOF segment) before the image data")
    height, width = struct.unpack(">HH", frame.body[1:5])
    scan = data.find(b"\xff\xda", frame.end)
    if scan < 0:
        raise HeaderError("cut short: no image data (SOS segment)")
    if data.find(b"\xff\xd9", scan) < 0:
        raise HeaderError("cut short: no end-of-image marker after the image data")
    return Header(width, height)


def _webp(data: bytes) -> Header:
    (riff_size,) = struct.unpack("<I", data[4:8])
    if riff_size + 8 > len(data):
        raise HeaderError(f"cut short: {len(data)} of the {riff_size + 8} bytes it declares")
    chunks = list(icc.riff_chunks(data[: riff_size + 8]))
    if not chunks:
        raise HeaderError("no chunks after the RIFF header")
    first = chunks[0]
    if first.kind == b"VP8X":
        if len(first.body) < 10:
            raise HeaderError("VP8X chunk too short")
        width = int.from_bytes(first.body[4:7], "little") + 1
        height = int.from_bytes(first.body[7:10], "little") + 1
        animated = bool(first.body[0] & 0x02)
        frames = sum(1 for chunk in chunks if chunk.kind == b"ANMF") if animated else 1
        if not any(chunk.kind in (b"VP8 ", b"VP8L", b"ANMF") for chunk in chunks):
            raise HeaderError("no image data (VP8, VP8L or ANMF chunk)")
        return Header(width, height, max(1, frames))
    width, height, _ = icc.webp_bitstream_size(first)
    return Header(width, height)


def _bmp(data: bytes) -> Header:
    offset, info_size = struct.unpack("<II", data[10:18])
    if info_size == 12:  # BITMAPCOREHEADER (OS/2): 16-bit sizes
        width, height, _, bits = struct.unpack("<HHHH", data[18:26])
        compression = 0
    elif info_size >= 40:
        width, height, _, bits, compression = struct.unpack("<iiHHI", data[18:34])
    else:
        raise HeaderError(f"unknown info header of {info_size} bytes")
    height = abs(height)  # negative: rows stored top-down
    if compression in (0, 3) and bits in (1, 4, 8, 16, 24, 32):  # uncompressed (3: bit fields)
        stride = (width * bits + 31) // 32 * 4
        if offset + stride * height > len(data):
            raise HeaderError(f"cut short: pixel rows need {offset + stride * height} bytes, the file has {len(data)}")
    return Header(width, height)


def _tiff(data: bytes) -> Header:
    order = "<" if data[:2] == b"II" else ">"
    (start,) = struct.unpack(order + "I", data[4:8])
    if not 8 <= start <= len(data) - 2:
        raise HeaderError(f"first directory at byte {start} lies outside the file")
    first, offset = _tiff_directory(data, start, order)
    pages, seen = 1, {start}
    # the rest of the chain only counts pages: where it breaks, OpenCV still reads the first one
    while offset and offset not in seen and len(seen) < _MAX_PAGES:
        seen.add(offset)
        try:
            tags, offset = _tiff_directory(data, offset, order)
        except (HeaderError, struct.error, IndexError, ValueError):
            break
        if not (tags.get(254) or [0])[0] & 1:  # NewSubfileType bit 0: a reduced-resolution copy
            pages += 1
    if 256 not in first or 257 not in first:
        raise HeaderError("first directory lacks ImageWidth or ImageLength")
    for offsets_tag, counts_tag in ((273, 279), (324, 325)):  # strips, tiles
        offsets, counts = first.get(offsets_tag, []), first.get(counts_tag, [])
        end = max((o + c for o, c in zip(offsets, counts, strict=False)), default=0)
        if end > len(data):
            raise HeaderError(f"cut short: image data runs to byte {end}, the file has {len(data)}")
    # PhotometricInterpretation 0/1 (grey) with two samples per pixel: grey and an extra (alpha) sample
    grey_alpha = (first.get(262) or [-1])[0] in (0, 1) and (first.get(277) or [1])[0] == 2
    return Header(first[256][0], first[257][0], max(1, pages), "page", grey_alpha=grey_alpha)


_TIFF_HEADER_TAGS = frozenset({254, 256, 257, 262, 273, 277, 279, 324, 325})
"""NewSubfileType, ImageWidth/Length, Photometric, strips, SamplesPerPixel, tiles."""


def _tiff_directory(data: bytes, offset: int, order: str) -> tuple[dict[int, list[int]], int]:
    """The tags of one IFD that the header checks read, and the next IFD's offset."""
    try:
        return icc.tiff_directory(data, offset, order, _TIFF_HEADER_TAGS)
    except ValueError as error:
        raise HeaderError(str(error)) from None


def _gif(data: bytes) -> Header:
    width, height, packed = struct.unpack("<HHB", data[6:11])
    pos = 13 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0)  # global colour table
    frames = 0
    for _ in range(_MAX_PAGES):
        if pos >= len(data):
            break
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then sub-blocks
            pos = _gif_sub_blocks(data, pos + 2)
        elif block == 0x2C:  # image descriptor (9 bytes), local colour table, LZW size, sub-blocks
            left, top, frame_width, frame_height, local = struct.unpack("<HHHHB", data[pos + 1 : pos + 10])
            # a frame may reach past the logical screen: the decoder's canvas is then that large
            width, height = max(width, left + frame_width), max(height, top + frame_height)
            pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
            pos = _gif_sub_blocks(data, pos + 1)
            frames += 1
        else:
            raise HeaderError(f"unknown block 0x{block:02x} at byte {pos}")
    if frames == 0:
        raise HeaderError("cut short: no complete image")
    return Header(width, height, frames)


def _gif_sub_blocks(data: bytes, pos: int) -> int:
    """Offset after a chain of data sub-blocks (each: a length byte, then that many bytes; 0 ends it)."""
    while True:
        if pos >= len(data):
            raise HeaderError("cut short inside a data block")
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos


def lift_decoder_pixel_cap() -> None:
    """Leave the size limit to the header check (``max_pixels``) alone in this process.

    OpenCV refuses images over 2^30 px on its own, reading ``OPENCV_IO_MAX_IMAGE_PIXELS`` once
    when it loads; a raised ``--max-pixels`` could not take effect past that. Every read in
    ``restorecli.io`` checks the header before OpenCV sees the file, so the entry point calls
    this before OpenCV is imported (an explicit setting of the variable is kept). It lives here,
    not in ``io``, because the entry point must not import numpy for ``--help``.
    """
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 40))
