"""Image I/O: formats, bit depths, grey/alpha, EXIF orientation, Unicode paths, atomic writes."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from restorecli import io
from restorecli.errors import ImageReadError, ImageWriteError


def random_image(mode: str, depth: int, height: int = 12, width: int = 17) -> io.Image:
    dtype = np.uint16 if depth == 16 else np.uint8
    peak = 65535 if depth == 16 else 255
    rng = np.random.default_rng(0)
    color = rng.integers(0, peak + 1, size=(height, width) if mode.startswith("L") else (height, width, 3)).astype(dtype)
    alpha = rng.integers(0, peak + 1, size=(height, width)).astype(dtype) if mode.endswith("A") else None
    return io.Image(color=color, alpha=alpha)


LOSSLESS_CASES = [
    ("png", "L", 8), ("png", "L", 16), ("png", "RGB", 8), ("png", "RGB", 16), ("png", "RGBA", 8), ("png", "RGBA", 16),
    ("tiff", "L", 16), ("tiff", "RGB", 8), ("tiff", "RGB", 16), ("tiff", "RGBA", 16),
    ("bmp", "RGB", 8), ("bmp", "L", 8), ("bmp", "RGBA", 8),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "mode", "depth"), LOSSLESS_CASES)
def test_lossless_round_trip_keeps_depth_mode_and_samples(tmp_path: Path, fmt: str, mode: str, depth: int) -> None:
    image = random_image(mode, depth)
    path = tmp_path / f"img{io.EXTENSION_BY_FORMAT[fmt]}"
    assert io.write_image(path, image) == []
    back = io.read_image(path)
    assert (back.mode, back.bit_depth, back.source_format) == (mode, depth, fmt)
    np.testing.assert_array_equal(back.color, image.color)
    if image.alpha is not None:
        np.testing.assert_array_equal(back.alpha, image.alpha)


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_lossy_formats_round_trip_closely(tmp_path: Path, fmt: str) -> None:
    color = np.full((16, 16, 3), (200, 100, 30), np.uint8)
    path = tmp_path / f"flat{io.EXTENSION_BY_FORMAT[fmt]}"
    io.write_image(path, io.Image(color=color))
    back = io.read_image(path)
    assert back.mode == "RGB" and np.abs(back.color.astype(int) - color).max() <= 3  # channel order kept


def test_what_a_format_cannot_hold_is_noted(tmp_path: Path) -> None:
    notes = io.write_image(tmp_path / "a.jpg", random_image("RGBA", 16))
    assert notes == ["16-bit input written as 8-bit (JPEG holds 8 bits)", "alpha dropped (JPEG has no alpha)"]
    back = io.read_image(tmp_path / "a.jpg")
    assert (back.mode, back.bit_depth) == ("RGB", 8)


@pytest.mark.parametrize("depth", [8, 16])
def test_tensor_round_trip_is_exact(depth: int) -> None:
    image = random_image("RGB", depth)
    tensor = io.image_to_tensor(image)
    assert tensor.shape == (1, 3, 12, 17) and tensor.dtype == torch.float32
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0
    np.testing.assert_array_equal(io.tensor_to_image(tensor, like=image).color, image.color)


def test_grey_is_replicated_in_and_averaged_out() -> None:
    image = random_image("LA", 16)
    tensor = io.image_to_tensor(image)
    assert torch.equal(tensor[:, 0], tensor[:, 2])
    out = io.tensor_to_image(tensor, like=image)
    assert out.mode == "LA" and out.bit_depth == 16
    np.testing.assert_array_equal(out.color, image.color)


def test_output_clamped_and_alpha_resized_for_sr() -> None:
    image = random_image("RGBA", 8, 5, 7)
    upscaled = torch.rand(1, 3, 10, 14) * 3 - 1  # unclamped network output
    out = io.tensor_to_image(upscaled, like=image)
    assert out.color.shape == (10, 14, 3) and out.alpha.shape == (10, 14)
    assert set(np.unique(out.color)) <= {0, 255} | set(range(256))
    same = io.tensor_to_image(torch.rand(1, 3, 5, 7), like=image)
    assert same.alpha is image.alpha  # same-size tasks pass alpha through untouched


# --- EXIF orientation ---------------------------------------------------------------------------


def exif_blob(orientation: int) -> bytes:
    """A minimal little-endian TIFF structure with one IFD0 entry: Orientation (SHORT)."""
    entry = struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + entry + struct.pack("<I", 0)


def jpeg_with_exif(jpeg: bytes, orientation: int) -> bytes:
    payload = b"Exif\x00\x00" + exif_blob(orientation)
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def png_with_exif(png: bytes, orientation: int) -> bytes:
    body = exif_blob(orientation)
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    return png[:33] + chunk + png[33:]  # after the signature and IHDR


def webp_with_exif(webp: bytes, orientation: int, width: int, height: int) -> bytes:
    body = exif_blob(orientation)
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0x08, 0, 0, 0])
    vp8x += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    chunks = vp8x + webp[12:] + b"EXIF" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


def tiff_with_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    """An uncompressed 8-bit RGB TIFF with an Orientation tag, written by hand."""
    height, width, _ = rgb.shape
    pixels = rgb.tobytes()
    bits_at = 8 + len(pixels)
    entries = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 3, bits_at), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, 8), (274, 3, 1, orientation), (277, 3, 1, 3), (278, 3, 1, height), (279, 4, 1, len(pixels))]  # fmt: skip
    out = b"II*\x00" + struct.pack("<I", bits_at + 6) + pixels + struct.pack("<HHH", 8, 8, 8)
    out += struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + packed
    return out + struct.pack("<I", 0)


def marked_image() -> np.ndarray:
    """A 12x20 BGR image with a distinct top-left block, so every orientation is told apart."""
    image = np.zeros((12, 20, 3), np.uint8)
    image[:4, :6] = (40, 200, 250)
    image[8:, 14:] = (250, 60, 10)
    return image


def test_8_bit_arrays_follow_the_benchmark_conventions(tmp_path: Path) -> None:
    """read_rgb8 (grey replicated, 16-bit rounded, luma on request) and quantize_to_uint8."""
    samples16 = np.array([[0, 128, 129, 385, 65535]], dtype=np.uint16)
    np.testing.assert_array_equal(io.to_8_bit(samples16), np.round(samples16 / 257.0).astype(np.uint8))
    io.write_image(tmp_path / "grey16.png", io.Image(color=np.repeat(samples16, 2, axis=0)))
    rgb = io.read_rgb8(tmp_path / "grey16.png")
    assert rgb.shape == (2, 5, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], io.to_8_bit(np.repeat(samples16, 2, axis=0)))
    assert (rgb[..., 0] == rgb[..., 2]).all()
    colour = random_image("RGB", 8)
    io.write_image(tmp_path / "colour.png", colour)
    luma = io.read_rgb8(tmp_path / "colour.png", grey=True)
    np.testing.assert_array_equal(luma[..., 0], cv2.cvtColor(colour.color, cv2.COLOR_RGB2GRAY))
    floats = np.array([-0.1, 0.5 / 255, 1.5 / 255, 0.5, 1.2], dtype=np.float32)
    np.testing.assert_array_equal(io.quantize_to_uint8(floats), [0, 0, 2, 128, 255])  # clamp; half to even
    tensor = torch.from_numpy(floats)
    np.testing.assert_array_equal(io.quantize_to_uint8(floats), (tensor.clamp(0, 1) * 255.0).round().to(torch.uint8))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_exif_orientation_matches_opencv_oriented_decode(tmp_path: Path, fmt: str, orientation: int) -> None:
    bgr = marked_image()
    if fmt == "jpeg":
        data = jpeg_with_exif(cv2.imencode(".jpg", bgr)[1].tobytes(), orientation)
    elif fmt == "png":
        data = png_with_exif(cv2.imencode(".png", bgr)[1].tobytes(), orientation)
    else:
        data = webp_with_exif(cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes(), orientation, 20, 12)
    path = tmp_path / f"photo{io.EXTENSION_BY_FORMAT[fmt]}"
    path.write_bytes(data)
    image = io.read_image(path)
    # OpenCV's IMREAD_COLOR applies the orientation (IMREAD_UNCHANGED ignores it): it is the oracle.
    oracle = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert image.orientation == orientation
    np.testing.assert_array_equal(image.color, oracle)
    assert image.color.shape[:2] == ((20, 12) if orientation >= 5 else (12, 20))


@pytest.mark.parametrize("orientation", [1, 3, 6, 7])
def test_tiff_orientation_applied_once(tmp_path: Path, orientation: int) -> None:
    rgb = marked_image()[..., ::-1].copy()
    path = tmp_path / "scan.tif"
    path.write_bytes(tiff_with_orientation(rgb, orientation))
    np.testing.assert_array_equal(io.read_image(path).color, io.apply_orientation(rgb, orientation))


def test_orientation_of_files_without_exif_is_1() -> None:
    png = cv2.imencode(".png", marked_image())[1].tobytes()
    assert io.exif_orientation(png, "png") == 1
    assert io.exif_orientation(b"\xff\xd8\xff\xe1\x00", "jpeg") == 1  # truncated segment: ignored


# --- paths, errors, atomic writes ---------------------------------------------------------------


def test_unicode_paths(tmp_path: Path) -> None:
    folder = tmp_path / "фото 写真"
    path = folder / "ünïcødé 图像.png"
    io.write_image(path, random_image("RGB", 8))
    assert io.read_image(path).mode == "RGB"


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated_png(tmp_path: Path) -> Path:
    data = cv2.imencode(".png", marked_image())[1].tobytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.png", "no such file"),
        (lambda d: d, "is a folder, expected an image file"),
        (lambda d: _file(d / "empty.png", b""), r"empty \(0 bytes\)"),
        (lambda d: _file(d / "notes.png", b"hello\n"), "named .png but its content is not PNG"),
        (_truncated_png, "cannot decode this PNG file: it is truncated or corrupt"),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path: Path, capfd: pytest.CaptureFixture[str], make, message: str) -> None:
    with pytest.raises(ImageReadError, match=message) as caught:
        io.read_image(make(tmp_path))
    assert "\n" not in str(caught.value)
    assert capfd.readouterr().err == ""  # OpenCV's own decoder warnings are silenced


def test_existing_output_is_kept_without_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "out.png"
    path.write_bytes(b"keep me")
    with pytest.raises(ImageWriteError, match="exists"):
        io.write_image(path, random_image("RGB", 8))
    assert path.read_bytes() == b"keep me"
    io.write_image(path, random_image("RGB", 8), overwrite=True)
    assert io.read_image(path).mode == "RGB"


def test_unwritable_folder_is_an_error_without_leftovers(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ImageWriteError, match="cannot write into this folder") as caught:
        io.write_image(blocker / "sub" / "out.png", random_image("RGB", 8))
    assert "\n" not in str(caught.value)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ImageWriteError):
            io.write_image(locked / "out.png", random_image("RGB", 8))


def test_interrupted_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(io.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        io.write_image(tmp_path / "out.png", random_image("RGB", 8))
    assert list(tmp_path.iterdir()) == []


def test_sniff_format() -> None:
    for fmt, ext in io.EXTENSION_BY_FORMAT.items():
        data = cv2.imencode(ext, marked_image())[1].tobytes()
        assert io.sniff_format(data[:16]) == fmt
    assert io.sniff_format(b"hello world") is None


def test_floating_point_tiff_is_read_as_16_bit_with_a_note(tmp_path: Path) -> None:
    samples = np.array([[[0.0, 0.5, 1.0], [1.5, -0.25, 0.25]]], dtype=np.float32)  # BGR on disk
    path = tmp_path / "hdr.tiff"
    assert cv2.imwrite(str(path), samples)
    image = io.read_image(path)
    assert image.color.dtype == np.uint16 and image.mode == "RGB"
    np.testing.assert_array_equal(image.color[0, 0], [65535, 32768, 0])  # RGB of (0, 0.5, 1) BGR
    np.testing.assert_array_equal(image.color[0, 1], [16384, 0, 65535])  # clipped ends
    assert image.decoder_notes == ("float32 samples read as 16-bit (33.3% of them were outside 0..1 and were clipped)",)
    grey = tmp_path / "grey.tiff"
    assert cv2.imwrite(str(grey), np.full((3, 4), 0.25, np.float32))
    image = io.read_image(grey)
    assert image.mode == "L" and image.decoder_notes == ("float32 samples read as 16-bit",)
    nan = tmp_path / "nan.tiff"
    assert cv2.imwrite(str(nan), np.full((3, 4), np.nan, np.float32))
    with pytest.raises(ImageReadError, match="expected finite samples, got NaN or infinite values"):
        io.read_image(nan)


def grey_alpha_png(grey: np.ndarray, alpha: np.ndarray) -> bytes:
    """A PNG of colour type 4 (grey + alpha), 8 or 16 bits, written by hand (OpenCV writes none)."""
    height, width = grey.shape
    depth = 16 if grey.dtype == np.uint16 else 8
    samples = np.dstack([grey, alpha]).astype(">u2" if depth == 16 else np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in samples)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, depth, 4, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("depth", [8, 16])
def test_grey_alpha_png_is_read_as_grey_with_alpha(tmp_path: Path, depth: int) -> None:
    # OpenCV decodes it as BGRA; read as RGBA, a restored grey image came out with coloured pixels
    image = random_image("LA", depth)
    path = _file(tmp_path / "la.png", grey_alpha_png(image.color, image.alpha))
    back = io.read_image(path)
    assert (back.mode, back.bit_depth, back.decoder_notes) == ("LA", depth, ())
    np.testing.assert_array_equal(back.color, image.color)
    np.testing.assert_array_equal(back.alpha, image.alpha)


def test_grey_alpha_tiff_says_that_its_transparency_was_not_read(tmp_path: Path) -> None:
    grey, alpha = np.array([[10, 20, 30]], np.uint8), np.array([[255, 128, 0]], np.uint8)
    pixels = np.dstack([grey, alpha]).tobytes()
    entries = [(256, 3), (257, 1), (258, 8), (259, 1), (262, 1), (273, 8), (277, 2), (278, 1), (279, len(pixels)), (338, 2)]
    data = b"II*\x00" + struct.pack("<I", 8 + len(pixels)) + pixels + struct.pack("<H", len(entries))
    data += b"".join(struct.pack("<HHIHH", tag, 3, 1, value, 0) for tag, value in entries) + struct.pack("<I", 0)
    image = io.read_image(_file(tmp_path / "la.tif", data))
    assert image.mode == "L" and image.decoder_notes == ("alpha dropped (OpenCV decodes this grey TIFF without its transparency)",)
    np.testing.assert_array_equal(image.color, grey)


def test_grey_png_with_a_transparent_colour_says_that_its_transparency_was_not_read(tmp_path: Path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    data = cv2.imencode(".png", grey)[1].tobytes()
    trns = struct.pack(">I", 2) + b"tRNS" + struct.pack(">H", 5) + struct.pack(">I", zlib.crc32(b"tRNS" + struct.pack(">H", 5)))
    image = io.read_image(_file(tmp_path / "key.png", data[:33] + trns + data[33:]))  # after IHDR
    assert image.mode == "L" and image.decoder_notes == ("alpha dropped (OpenCV decodes this grey PNG without its transparency)",)
    np.testing.assert_array_equal(image.color, grey)
