"""Embedded ICC colour profiles: read from PNG/JPEG/WebP inputs, written into PNG/JPEG/WebP outputs.

The inputs are made here at the byte level: a whole PNG by hand, and profile segments/chunks
spliced into JPEG and WebP files that OpenCV encoded. The "profiles" are synthetic: a valid
128-byte ICC header followed by seeded random bytes, so any reordering or loss shows.
"""

from __future__ import annotations

import logging
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from restorecli import icc, io

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fake_profile(size: int = 700, space: bytes = b"RGB ", seed: int = 0) -> bytes:
    """``size`` bytes: an ICC v4 header (display class, ``space``, PCS XYZ, D50), no tags, then noise.

    The header is consistent enough that libpng accepts it without a warning.
    """
    header = bytearray(132)
    header[0:4] = size.to_bytes(4, "big")
    header[8:24] = bytes([4, 0x40, 0, 0]) + b"mntr" + space + b"XYZ "
    header[36:40] = b"acsp"
    header[68:80] = struct.pack(">iii", 63190, 65536, 54061)  # D50 in s15.16: 0.9642, 1.0, 0.8249
    return bytes(header) + np.random.default_rng(seed).integers(0, 256, size - 132, dtype=np.uint8).tobytes()


def rgb_pixels(height: int = 6, width: int = 5) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --- hand-made inputs ---------------------------------------------------------------------------


def png_chunk(kind: bytes, body: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + body) if crc is None else crc
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def iccp_chunk(profile: bytes, *, name: bytes = b"Display P3", zdata: bytes | None = None) -> bytes:
    return png_chunk(b"iCCP", name + b"\x00\x00" + (zlib.compress(profile) if zdata is None else zdata))


def hand_made_png(rgb: np.ndarray, *metadata: bytes) -> bytes:
    """An 8-bit RGB PNG (filter 0 on every row), with ``metadata`` chunks between IHDR and IDAT."""
    height, width, _ = rgb.shape
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    rows = b"".join(b"\x00" + row.tobytes() for row in rgb)
    return PNG_SIGNATURE + header + b"".join(metadata) + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b"")


def app2_segments(profile: bytes, *, per_segment: int = 65519, order: list[int] | None = None, count: int | None = None) -> bytes:
    """ICC.1 Annex B APP2 segments (``order`` picks which parts, by 1-based number, in which order)."""
    parts = [profile[i : i + per_segment] for i in range(0, len(profile), per_segment)]
    count = len(parts) if count is None else count
    out = b""
    for number in order or range(1, len(parts) + 1):
        body = b"ICC_PROFILE\x00" + bytes([number, count]) + parts[number - 1]
        out += b"\xff\xe2" + struct.pack(">H", len(body) + 2) + body
    return out


def opencv_jpeg(pixels: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def jpeg_with(jpeg: bytes, segments: bytes) -> bytes:
    """Segments spliced in after SOI and OpenCV's APP0 (JFIF) segment."""
    assert jpeg[2:4] == b"\xff\xe0"
    after_app0 = 4 + int.from_bytes(jpeg[4:6], "big")
    return jpeg[:after_app0] + segments + jpeg[after_app0:]


def webp_with_iccp(webp: bytes, profile: bytes, width: int, height: int) -> bytes:
    """A simple (VP8L) WebP turned into an extended one: VP8X with the ICC flag, ICCP, image chunk."""
    canvas = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    padded = profile + b"\x00" * (len(profile) % 2)
    chunks = b"VP8X" + struct.pack("<I", 10) + bytes([0x20, 0, 0, 0]) + canvas
    chunks += b"ICCP" + struct.pack("<I", len(profile)) + padded + webp[12:]
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


def decoded(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def read(tmp_path: Path, data: bytes, name: str) -> io.Image:
    path = tmp_path / name
    path.write_bytes(data)
    return io.read_image(path)


# --- what the written files look like, parsed independently of restorecli.icc ----------------


def png_chunk_list(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk, each CRC checked."""
    assert data.startswith(PNG_SIGNATURE)
    chunks, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert int.from_bytes(data[pos + 8 + length : pos + 12 + length], "big") == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def jpeg_header_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, payload) of the segments from SOI up to SOS, which OpenCV writes without fill bytes."""
    segments, pos = [], 2
    while data[pos + 1] != 0xDA:
        assert data[pos] == 0xFF
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        segments.append((data[pos + 1], data[pos + 4 : end]))
        pos = end
    return segments


def webp_chunk_list(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP" and int.from_bytes(data[4:8], "little") == len(data) - 8
    chunks, pos = [], 12
    while pos < len(data):
        length = int.from_bytes(data[pos + 4 : pos + 8], "little")
        chunks.append((data[pos : pos + 4], data[pos + 8 : pos + 8 + length]))
        pos += 8 + length + (length & 1)
    assert pos == len(data)
    return chunks


# --- reading ------------------------------------------------------------------------------------


def test_png_iccp_is_read(tmp_path: Path) -> None:
    rgb, profile = rgb_pixels(), fake_profile()
    image = read(tmp_path, hand_made_png(rgb, iccp_chunk(profile)), "p3.png")
    assert image.icc_profile == profile
    np.testing.assert_array_equal(image.color, rgb)


def test_jpeg_profile_segments_are_reassembled_by_sequence_number(tmp_path: Path) -> None:
    bgr = rgb_pixels(8, 8)
    jpeg = opencv_jpeg(bgr)
    profile = fake_profile(2 * 65519 + 999)
    # Written 2, 3, 1 with an unrelated APP2 between: the sequence numbers decide the order.
    shuffled = app2_segments(profile, order=[2, 3]) + b"\xff\xe2\x00\x06FPXR" + app2_segments(profile, order=[1])
    image = read(tmp_path, jpeg_with(jpeg, shuffled), "wide.jpg")
    assert image.icc_profile == profile
    np.testing.assert_array_equal(image.color, cv2.cvtColor(decoded(jpeg), cv2.COLOR_BGR2RGB))


def test_webp_iccp_is_read(tmp_path: Path) -> None:
    bgr = rgb_pixels(7, 9)
    webp = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()  # lossless: VP8L
    profile = fake_profile(333)  # odd: the chunk is padded
    image = read(tmp_path, webp_with_iccp(webp, profile, 9, 7), "a.webp")
    assert image.icc_profile == profile
    np.testing.assert_array_equal(image.color, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def test_bytes_after_the_declared_profile_size_are_dropped(tmp_path: Path) -> None:
    profile = fake_profile(600)
    image = read(tmp_path, jpeg_with(opencv_jpeg(rgb_pixels()), app2_segments(profile + b"\x00" * 4)), "padded.jpg")
    assert image.icc_profile == profile


def test_files_without_a_profile_have_none(tmp_path: Path) -> None:
    assert read(tmp_path, hand_made_png(rgb_pixels()), "a.png").icc_profile is None
    assert read(tmp_path, opencv_jpeg(rgb_pixels()), "a.jpg").icc_profile is None
    assert read(tmp_path, cv2.imencode(".bmp", rgb_pixels())[1].tobytes(), "a.bmp").icc_profile is None


PROFILE = fake_profile(400)
BAD_PNG_PROFILES = {
    "bad zlib": iccp_chunk(PROFILE, zdata=b"\x78\x9c this is not deflate"),
    "zlib stream cut before its checksum": iccp_chunk(PROFILE, zdata=zlib.compress(PROFILE)[:-2]),
    "bad crc": png_chunk(b"iCCP", b"P3\x00\x00" + zlib.compress(PROFILE), crc=1234),
    "no name": png_chunk(b"iCCP", b"\x00\x00" + zlib.compress(PROFILE)),
    "compression method 1": png_chunk(b"iCCP", b"P3\x00\x01" + zlib.compress(PROFILE)),
    "not an icc profile": iccp_chunk(b"hello, not a profile" * 10),
    "declared size too large": iccp_chunk(PROFILE[:300]),
    "two iccp chunks": iccp_chunk(PROFILE) + iccp_chunk(PROFILE),
}


@pytest.mark.parametrize("case", BAD_PNG_PROFILES)
def test_malformed_png_profile_is_ignored_and_the_pixels_read(tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str) -> None:
    rgb = rgb_pixels()
    with caplog.at_level(logging.DEBUG, logger="restorecli.io"):
        image = read(tmp_path, hand_made_png(rgb, BAD_PNG_PROFILES[case]), "bad.png")
    assert image.icc_profile is None
    np.testing.assert_array_equal(image.color, rgb)
    assert "ignoring its ICC profile" in caplog.text


BIG = fake_profile(65519 + 500)
BAD_JPEG_PROFILES = {
    "segment missing": app2_segments(BIG, order=[1]),
    "segment twice": app2_segments(BIG, order=[1, 2, 1]),
    "counts disagree": app2_segments(BIG, order=[1]) + app2_segments(BIG, order=[2], count=3),
    "number 0": app2_segments(BIG, order=[1], count=0),
    "no numbering": b"\xff\xe2\x00\x0fICC_PROFILE\x00\x01",
    "truncated profile": app2_segments(PROFILE[:200]),
}


@pytest.mark.parametrize("case", BAD_JPEG_PROFILES)
def test_malformed_jpeg_profile_is_ignored_and_the_pixels_read(tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str) -> None:
    jpeg = opencv_jpeg(rgb_pixels(8, 8))
    with caplog.at_level(logging.DEBUG, logger="restorecli.io"):
        image = read(tmp_path, jpeg_with(jpeg, BAD_JPEG_PROFILES[case]), "bad.jpg")
    assert image.icc_profile is None
    np.testing.assert_array_equal(image.color, cv2.cvtColor(decoded(jpeg), cv2.COLOR_BGR2RGB))
    assert "ignoring its ICC profile" in caplog.text


def test_profile_cut_off_with_the_file_is_ignored() -> None:
    data = hand_made_png(rgb_pixels(), iccp_chunk(PROFILE))
    for end in (45, 60, 100):  # inside the iCCP chunk (it starts at 33)
        with pytest.raises(icc.ProfileError):
            icc.find_profile(data[:end], "png")
    jpeg = jpeg_with(opencv_jpeg(rgb_pixels()), app2_segments(PROFILE))
    with pytest.raises(icc.ProfileError):
        icc.find_profile(jpeg[:200], "jpeg")


# --- writing ------------------------------------------------------------------------------------


def make_image(mode: str) -> io.Image:
    rng = np.random.default_rng(5)
    grey = mode.startswith("L")
    color = rng.integers(0, 256, (10, 13) if grey else (10, 13, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (10, 13), dtype=np.uint8) if mode.endswith("A") else None
    return io.Image(color=color, alpha=alpha, icc_profile=fake_profile(space=b"GRAY" if grey else b"RGB "))


WRITE_CASES = [("png", "RGB", 95), ("png", "L", 95), ("png", "RGBA", 95), ("jpeg", "RGB", 95), ("jpeg", "L", 95),
               ("webp", "RGB", 95), ("webp", "RGBA", 95), ("webp", "RGBA", 101), ("webp", "RGB", 101)]  # fmt: skip


@pytest.mark.parametrize(("fmt", "mode", "quality"), WRITE_CASES)
def test_written_profile_reads_back_and_pixels_decode_unchanged(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], fmt: str, mode: str, quality: int
) -> None:
    image = make_image(mode)
    data, notes = io.encode_image(image, fmt, quality=quality)
    plain, _ = io.encode_image(replace(image, icc_profile=None), fmt, quality=quality)
    assert notes == [] and data != plain
    np.testing.assert_array_equal(decoded(data), decoded(plain))  # same pixels as without the profile

    path = tmp_path / f"out{io.EXTENSION_BY_FORMAT[fmt]}"
    io.write_image(path, image, quality=quality)
    assert path.read_bytes() == data
    back = io.read_image(path)
    assert back.icc_profile == image.icc_profile
    assert capfd.readouterr().err == ""  # libpng checks a PNG's profile against its colour type: no complaint


def test_png_layout_iccp_right_after_ihdr_and_no_srgb() -> None:
    old = iccp_chunk(fake_profile(seed=1), name=b"old")
    srgb = png_chunk(b"sRGB", b"\x00")
    data = hand_made_png(rgb_pixels(), srgb, old, png_chunk(b"tEXt", b"Comment\x00hi"))
    profile = fake_profile(seed=2)
    out = icc.embed_profile(data, "png", profile)
    chunks = png_chunk_list(out)
    assert [kind for kind, _ in chunks] == [b"IHDR", b"iCCP", b"tEXt", b"IDAT", b"IEND"]
    name, _, rest = chunks[1][1].partition(b"\x00")
    assert 1 <= len(name) <= 79 and rest[0] == 0 and zlib.decompress(rest[1:]) == profile
    np.testing.assert_array_equal(decoded(out), decoded(data))


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_embedding_replaces_a_profile_already_there(fmt: str) -> None:
    plain, _ = io.encode_image(make_image("RGB"), fmt)
    first, second = fake_profile(seed=1), fake_profile(seed=2)
    twice = icc.embed_profile(icc.embed_profile(plain, fmt, first), fmt, second)
    if fmt == "png":
        found = [kind for kind, _ in png_chunk_list(twice) if kind == b"iCCP"]
    elif fmt == "jpeg":
        found = [body for marker, body in jpeg_header_segments(twice) if marker == 0xE2 and body.startswith(b"ICC_PROFILE")]
    else:
        found = [kind for kind, _ in webp_chunk_list(twice) if kind == b"ICCP"]
    assert len(found) == 1 and icc.find_profile(twice, fmt) == second
    np.testing.assert_array_equal(decoded(twice), decoded(plain))


@pytest.mark.parametrize("size", [65519, 65520, 150_000])
def test_large_jpeg_profile_is_split_into_numbered_segments(tmp_path: Path, size: int) -> None:
    image = replace(make_image("RGB"), icc_profile=fake_profile(size))
    io.write_image(tmp_path / "big.jpg", image)
    data = (tmp_path / "big.jpg").read_bytes()
    segments = jpeg_header_segments(data)
    assert segments[0][0] == 0xE0 and segments[0][1].startswith(b"JFIF\x00")  # APP0 stays first
    icc_bodies = [body for marker, body in segments if marker == 0xE2 and body.startswith(b"ICC_PROFILE\x00")]
    count = -(-size // 65519)
    assert [marker for marker, _ in segments[1 : 1 + count]] == [0xE2] * count  # right after APP0
    assert [(body[12], body[13]) for body in icc_bodies] == [(n, count) for n in range(1, count + 1)]
    assert all(len(body) + 2 <= 65535 for body in icc_bodies)
    assert b"".join(body[14:] for body in icc_bodies) == image.icc_profile
    assert io.read_image(tmp_path / "big.jpg").icc_profile == image.icc_profile


@pytest.mark.parametrize(("mode", "quality", "image_chunks", "alpha_flag"),
                         [("RGB", 95, [b"VP8 "], 0), ("RGB", 101, [b"VP8L"], 0),
                          ("RGBA", 101, [b"VP8L"], 0x10), ("RGBA", 95, [b"ALPH", b"VP8 "], 0x10)])  # fmt: skip
def test_webp_becomes_extended_with_iccp_after_vp8x(mode: str, quality: int, image_chunks: list[bytes], alpha_flag: int) -> None:
    image = replace(make_image(mode), icc_profile=fake_profile(701))  # odd size: the ICCP chunk gets a pad byte
    chunks = webp_chunk_list(io.encode_image(image, "webp", quality=quality)[0])
    assert [kind for kind, _ in chunks] == [b"VP8X", b"ICCP", *image_chunks]
    vp8x = chunks[0][1]
    assert vp8x[0] == 0x20 | alpha_flag
    assert int.from_bytes(vp8x[4:7], "little") + 1 == 13 and int.from_bytes(vp8x[7:10], "little") + 1 == 10
    assert chunks[1][1] == image.icc_profile


@pytest.mark.parametrize(
    ("fmt", "mode", "space", "note"),
    [
        ("bmp", "RGB", b"RGB ", "ICC profile not kept (BMP output does not carry one; PNG, JPEG and WebP do)"),
        ("tiff", "RGB", b"RGB ", "ICC profile not kept (TIFF output does not carry one; PNG, JPEG and WebP do)"),
        ("png", "RGB", b"CMYK", "ICC profile dropped (it describes CMYK data, the output is RGB)"),
        ("webp", "L", b"GRAY", "ICC profile dropped (it describes GRAY data, the output is RGB)"),  # WebP is RGB
        ("png", "LA", b"GRAY", "ICC profile dropped (it describes GRAY data, the output is RGB)"),  # written as RGBA
        ("jpeg", "L", b"RGB ", "ICC profile dropped (it describes RGB data, the output is GRAY)"),
    ],
)
def test_profile_that_cannot_go_into_the_output_is_noted(fmt: str, mode: str, space: bytes, note: str) -> None:
    image = replace(make_image(mode), icc_profile=fake_profile(space=space))
    data, notes = io.encode_image(image, fmt)
    assert notes == [note]
    assert icc.find_profile(data, fmt) is None


def test_restored_tensor_keeps_the_profile() -> None:
    image = make_image("RGBA")
    out = io.tensor_to_image(torch.rand(1, 3, 20, 26), like=image)
    assert out.icc_profile == image.icc_profile
    assert io.fit_to_format(out, "jpeg")[0].icc_profile == image.icc_profile


def hand_made_tiff(rgb: np.ndarray, profile: bytes | None) -> bytes:
    """A little-endian, uncompressed, one-strip RGB TIFF, with the profile in tag 34675."""
    height, width, _ = rgb.shape
    pixels = rgb.tobytes()
    entries = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 3, None), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, None), (277, 3, 1, 3), (278, 3, 1, height), (279, 4, 1, len(pixels)), (284, 3, 1, 1)]  # fmt: skip
    if profile is not None:
        entries.append((34675, 7, len(profile), None))
    ifd_size = 2 + 12 * len(entries) + 4
    bits_at = 8 + ifd_size
    profile_at = bits_at + 6
    pixels_at = profile_at + (len(profile) if profile else 0)
    where = {258: bits_at, 273: pixels_at, 34675: profile_at}
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if value is None and tag != 273:
            ifd += struct.pack("<HHII", tag, kind, count, where[tag])
        elif kind == 3:
            ifd += struct.pack("<HHIHH", tag, kind, count, value if value is not None else 0, 0)
        else:
            ifd += struct.pack("<HHII", tag, kind, count, where[tag] if value is None else value)
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<HHH", 8, 8, 8) + (profile or b"") + pixels


def test_tiff_profile_is_read(tmp_path: Path) -> None:
    rgb, profile = rgb_pixels(5, 7), fake_profile(500)
    image = read(tmp_path, hand_made_tiff(rgb, profile), "wide.tif")
    assert image.icc_profile == profile
    np.testing.assert_array_equal(image.color, rgb)
    assert read(tmp_path, hand_made_tiff(rgb, None), "plain.tif").icc_profile is None
