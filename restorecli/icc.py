"""ICC colour profiles in PNG, JPEG and WebP files: found in a file's bytes, put into encoded bytes.

OpenCV neither returns nor writes embedded profiles, so they are handled here at the byte level,
following the container specifications:

* PNG (ISO/IEC 15948, PNG 3rd edition): one ``iCCP`` chunk before PLTE and IDAT holding a profile
  name (1-79 bytes), a NUL, compression method 0 and a zlib datastream. An ``sRGB`` chunk must not
  sit beside it.
* JPEG (ICC.1 Annex B.4): ``APP2`` segments that start with ``ICC_PROFILE\\0``, a 1-based sequence
  number and the number of segments, followed by up to 65519 bytes of the profile each.
* WebP (RIFF container): an ``ICCP`` chunk right after ``VP8X``, whose flags then have the ICC bit;
  a simple ``VP8 ``/``VP8L`` file is turned into the extended layout to hold one.

The functions that walk the containers (``png_chunks``, ``jpeg_segments``, ``riff_chunks``) and
``webp_bitstream_size`` are shared with the EXIF reader in ``restorecli.io`` and the header
reader in ``restorecli.headers``.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Collection, Iterator
from typing import NamedTuple

FORMATS_WITH_ICC = frozenset({"png", "jpeg", "webp"})
"""Formats whose profile is read and written."""

JPEG_SEGMENT_DATA = 65519
"""Profile bytes per APP2 segment: 65535 minus the length field (2), identifier (12) and numbering (2)."""

MAX_PROFILE_BYTES = 255 * JPEG_SEGMENT_DATA
"""The largest profile carried (the most 255 JPEG segments hold); also bounds PNG decompression."""

_JPEG_ICC_ID = b"ICC_PROFILE\x00"
_PNG_PROFILE_NAME = b"ICC profile"
_ICC_HEADER_BYTES = 128
_VP8X_ICC_FLAG = 0x20
_VP8X_ALPHA_FLAG = 0x10


class ProfileError(ValueError):
    """An embedded profile that is malformed, truncated or inconsistent (the image itself may be fine)."""


class Chunk(NamedTuple):
    """A PNG or RIFF chunk: its type, its data, and where it starts and ends (CRC/padding included)."""

    kind: bytes
    body: bytes
    start: int
    end: int


class Segment(NamedTuple):
    """A JPEG marker segment with a length field: marker byte, payload, start and end offsets."""

    marker: int
    body: bytes
    start: int
    end: int


# ---------------------------------------------------------------------------------------------
# walking the containers


def png_chunks(data: bytes) -> Iterator[Chunk]:
    """Chunks of a PNG file after its signature, up to and including IEND."""
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        yield Chunk(kind, data[pos + 8 : pos + 8 + length], pos, pos + 12 + length)
        if kind == b"IEND":
            return
        pos += 12 + length


def jpeg_segments(data: bytes) -> Iterator[Segment]:
    """Marker segments of a JPEG file between SOI and the first SOS (the metadata part).

    Fill bytes and markers without a length field (SOI, TEM, RSTn) are stepped over. The payload of
    a segment cut short by the end of the data is returned as far as it goes.
    """
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no more metadata
            return
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        yield Segment(marker, data[pos + 4 : pos + 2 + length], pos, pos + 2 + length)
        pos += 2 + length


def riff_chunks(data: bytes) -> Iterator[Chunk]:
    """Chunks of a WebP (RIFF) file after its 12-byte header."""
    pos = 12
    while pos + 8 <= len(data):
        kind, length = struct.unpack("<4sI", data[pos : pos + 8])
        end = pos + 8 + length + (length & 1)
        yield Chunk(kind, data[pos + 8 : pos + 8 + length], pos, end)
        pos = end


TIFF_TYPES = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4), 7: ("B", 1), 16: ("Q", 8)}
"""BYTE, SHORT, LONG, UNDEFINED (bytes), LONG8: the value types of the tags read here."""


def tiff_directory(data: bytes, offset: int, order: str, tags: Collection[int]) -> tuple[dict[int, list[int]], int]:
    """The wanted tags of the TIFF directory (IFD) at ``offset``, each value a list of integers
    (read inline or from where the entry points), and the next directory's offset (0: none).

    Raises:
        ValueError: The directory or a value runs past the end of the data.
    """
    (count,) = struct.unpack(order + "H", data[offset : offset + 2])
    found: dict[int, list[int]] = {}
    for i in range(count):
        entry = data[offset + 2 + 12 * i : offset + 14 + 12 * i]
        tag, kind, n = struct.unpack(order + "HHI", entry[:8])
        if kind not in TIFF_TYPES or tag not in tags:
            continue
        code, size = TIFF_TYPES[kind]
        if n * size <= 4:
            raw = entry[8 : 8 + n * size]
        else:
            (where,) = struct.unpack(order + "I", entry[8:12])
            raw = data[where : where + n * size]
            if len(raw) < n * size:
                raise ValueError(f"tag {tag} points past the end of the file")
        found[tag] = list(struct.unpack(f"{order}{n}{code}", raw))
    end = offset + 2 + 12 * count
    if end + 4 > len(data):
        raise ValueError(f"cut short inside the directory at byte {offset}")
    (following,) = struct.unpack(order + "I", data[end : end + 4])
    return found, following


# ---------------------------------------------------------------------------------------------
# reading


def find_profile(data: bytes, fmt: str) -> bytes | None:
    """The ICC profile embedded in an encoded image.

    Args:
        data: The whole file.
        fmt: ``png``, ``jpeg``, ``webp`` or ``tiff`` (the first page's profile); other formats
            have none (None).

    Returns:
        The profile's bytes (trimmed to the size its header declares), or None when there is none.

    Raises:
        ProfileError: A profile is there but malformed: bad CRC or zlib data, missing or
            inconsistently numbered JPEG segments, truncated, or not an ICC profile at all.
    """
    try:
        if fmt == "png":
            profile = _png_profile(data)
        elif fmt == "jpeg":
            profile = _jpeg_profile(data)
        elif fmt == "webp":
            profile = next((chunk.body for chunk in riff_chunks(data) if chunk.kind == b"ICCP"), None)
        elif fmt == "tiff":
            profile = _tiff_profile(data)
        else:
            return None
    except (struct.error, IndexError, ValueError, zlib.error) as error:
        raise ProfileError(f"unreadable profile data: {error}") from None
    return None if profile is None else _checked(profile)


TIFF_ICC_TAG = 34675  # InterColorProfile (TIFF/EP, Photoshop): the profile's bytes, type UNDEFINED


def _tiff_profile(data: bytes) -> bytes | None:
    """The profile in the first directory of a classic (not Big-) TIFF, or None."""
    order = "<" if data[:2] == b"II" else ">"
    if struct.unpack(order + "H", data[2:4])[0] != 42:
        return None
    (start,) = struct.unpack(order + "I", data[4:8])
    profile = tiff_directory(data, start, order, (TIFF_ICC_TAG,))[0].get(TIFF_ICC_TAG)
    return None if profile is None else bytes(profile)


def _png_profile(data: bytes) -> bytes | None:
    found = [chunk for chunk in _png_metadata(data) if chunk.kind == b"iCCP"]
    if not found:
        return None
    if len(found) > 1:
        raise ProfileError(f"{len(found)} iCCP chunks (PNG allows one)")
    chunk = found[0]
    (crc,) = struct.unpack(">I", data[chunk.end - 4 : chunk.end])
    if zlib.crc32(chunk.kind + chunk.body) != crc:
        raise ProfileError("iCCP chunk fails its CRC check (damaged or truncated)")
    name, separator, rest = chunk.body.partition(b"\x00")
    if not separator or not 1 <= len(name) <= 79 or not rest:
        raise ProfileError("iCCP chunk has no profile name or no data")
    if rest[0] != 0:
        raise ProfileError(f"iCCP compression method {rest[0]} (only 0, zlib, is defined)")
    inflater = zlib.decompressobj()
    profile = inflater.decompress(rest[1:], MAX_PROFILE_BYTES + 1)
    if len(profile) > MAX_PROFILE_BYTES:
        raise ProfileError(f"iCCP profile inflates past {MAX_PROFILE_BYTES} bytes")
    if not inflater.eof:
        raise ProfileError("iCCP zlib data ends early")
    return profile


def _png_metadata(data: bytes) -> Iterator[Chunk]:
    """Chunks before the first IDAT, where the PNG specification puts iCCP and sRGB."""
    for chunk in png_chunks(data):
        if chunk.kind == b"IDAT":
            return
        yield chunk


def _jpeg_profile(data: bytes) -> bytes | None:
    parts: dict[int, bytes] = {}
    count = 0
    for segment in jpeg_segments(data):
        if segment.marker != 0xE2 or not segment.body.startswith(_JPEG_ICC_ID):
            continue
        number, total = segment.body[12], segment.body[13]
        count = count or total
        if total != count or not 1 <= number <= total or number in parts:
            raise ProfileError(f"ICC segments numbered inconsistently: {number} of {total} where 1..{count} expected once each")
        parts[number] = segment.body[14:]
    if not parts:
        return None
    if len(parts) != count:
        raise ProfileError(f"{len(parts)} of {count} ICC segments present")
    return b"".join(parts[number] for number in range(1, count + 1))


def _checked(profile: bytes) -> bytes:
    """A profile whose 128-byte header is there, signed ``acsp``, and whose declared size fits."""
    if len(profile) < _ICC_HEADER_BYTES or profile[36:40] != b"acsp":
        raise ProfileError(f"not an ICC profile ({len(profile)} bytes without the 'acsp' header)")
    (size,) = struct.unpack(">I", profile[:4])
    if not _ICC_HEADER_BYTES <= size <= len(profile):
        raise ProfileError(f"profile declares {size} bytes but {len(profile)} are present")
    if size > MAX_PROFILE_BYTES:
        raise ProfileError(f"profile of {size} bytes, more than the {MAX_PROFILE_BYTES} carried")
    return profile[:size]


# ---------------------------------------------------------------------------------------------
# writing


def unfit_reason(profile: bytes, fmt: str, *, grey: bool) -> str | None:
    """Why a profile cannot describe an output, as a note for the user; None when it can.

    Args:
        profile: A profile as returned by ``find_profile``.
        fmt: Output format.
        grey: Whether the encoder was given single-channel samples (WebP stores them as RGB).
    """
    if fmt not in FORMATS_WITH_ICC:
        return f"ICC profile not kept ({fmt.upper()} output does not carry one; PNG, JPEG and WebP do)"
    expected = b"GRAY" if grey and fmt != "webp" else b"RGB "
    space = profile[16:20]
    if space != expected:
        stored = expected.decode().strip()
        return f"ICC profile dropped (it describes {space.decode('latin-1').strip()} data, the output is {stored})"
    return None


def embed_profile(data: bytes, fmt: str, profile: bytes) -> bytes:
    """Put a profile into an encoded PNG, JPEG or WebP, replacing any profile already there.

    Args:
        data: A whole, well-formed file as an encoder produced it.
        fmt: ``png``, ``jpeg`` or ``webp``.
        profile: The profile, at most ``MAX_PROFILE_BYTES``.

    Returns:
        The file with the profile, pixel data untouched.
    """
    if len(profile) > MAX_PROFILE_BYTES:
        raise ValueError(f"a profile of {len(profile)} bytes exceeds {MAX_PROFILE_BYTES}")
    if fmt == "png":
        return _png_with_profile(data, profile)
    if fmt == "jpeg":
        return _jpeg_with_profile(data, profile)
    if fmt == "webp":
        return _webp_with_profile(data, profile)
    raise ValueError(f"cannot embed an ICC profile in {fmt!r}")


def _png_with_profile(data: bytes, profile: bytes) -> bytes:
    chunks = list(png_chunks(data))
    ihdr = chunks[0]
    assert ihdr.kind == b"IHDR", "PNG encoder output starts with IHDR"
    iccp = _PNG_PROFILE_NAME + b"\x00\x00" + zlib.compress(profile)  # name, NUL, method 0 (zlib)
    kept = [data[chunk.start : chunk.end] for chunk in chunks[1:] if chunk.kind not in (b"iCCP", b"sRGB")]
    chunk = struct.pack(">I", len(iccp)) + b"iCCP" + iccp + struct.pack(">I", zlib.crc32(b"iCCP" + iccp))
    return data[: ihdr.end] + chunk + b"".join(kept) + data[chunks[-1].end :]


def _jpeg_with_profile(data: bytes, profile: bytes) -> bytes:
    segments = list(jpeg_segments(data))
    insert_at = 2  # after SOI ...
    for segment in segments:
        if segment.marker != 0xE0:
            break
        insert_at = segment.end  # ... and the APP0 (JFIF) segments that must come first
    count = -(-len(profile) // JPEG_SEGMENT_DATA)
    out = [data[:insert_at]]
    for index in range(count):
        body = _JPEG_ICC_ID + bytes([index + 1, count])
        body += profile[index * JPEG_SEGMENT_DATA : (index + 1) * JPEG_SEGMENT_DATA]
        out.append(b"\xff\xe2" + struct.pack(">H", len(body) + 2) + body)
    cursor = insert_at
    for segment in segments:
        if segment.marker == 0xE2 and segment.body.startswith(_JPEG_ICC_ID):  # a profile already there
            out.append(data[cursor : segment.start])
            cursor = segment.end
    out.append(data[cursor:])
    return b"".join(out)


def _webp_with_profile(data: bytes, profile: bytes) -> bytes:
    chunks = list(riff_chunks(data))
    first = chunks[0]
    if first.kind == b"VP8X":
        header = bytes([first.body[0] | _VP8X_ICC_FLAG]) + first.body[1:]
        rest = chunks[1:]
    else:
        width, height, alpha = webp_bitstream_size(first)
        flags = _VP8X_ICC_FLAG | (_VP8X_ALPHA_FLAG if alpha else 0)
        header = bytes([flags, 0, 0, 0]) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
        rest = chunks
    body = b"WEBP" + _riff_chunk(b"VP8X", header) + _riff_chunk(b"ICCP", profile)
    body += b"".join(data[chunk.start : chunk.end] for chunk in rest if chunk.kind != b"ICCP")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _riff_chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + b"\x00" * (len(body) & 1)


def webp_bitstream_size(chunk: Chunk) -> tuple[int, int, bool]:
    """(width, height, has alpha) of a simple WebP's ``VP8 `` (RFC 6386 key frame) or ``VP8L`` chunk."""
    body = chunk.body
    if chunk.kind == b"VP8 " and body[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", body[6:10])
        return width & 0x3FFF, height & 0x3FFF, False
    if chunk.kind == b"VP8L" and body[:1] == b"\x2f":
        (bits,) = struct.unpack("<I", body[1:5])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool((bits >> 28) & 1)
    raise ValueError(f"unexpected WebP layout: first chunk {chunk.kind!r}")
