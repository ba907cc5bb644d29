"""`restore sr|denoise|deblur|dehaze` end to end with tiny random-weight checkpoints made here."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from restorecli import models
from restorecli.cli import app, main
from restorecli.inference import ImageRestorer

def _scan_op_available() -> bool:
    import restorecli.ops

    return hasattr(restorecli.ops, "selective_scan")


# The networks need the selective-scan op; until it is in the checkout these tests cannot run.
pytestmark = pytest.mark.skipif(not _scan_op_available(), reason="restorecli.ops.selective_scan has not landed yet")

TINY_MAIR = {
    "in_chans": 3, "img_range": 1.0, "embed_dim": 12, "depths": [1, 1], "d_state": 1, "ssm_ratio": 1.0,
    "mlp_ratio": 1.0, "resi_connection": "1conv", "scan_len": 4,
}  # fmt: skip
TINY_UNET = {
    "inp_channels": 3, "out_channels": 3, "dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1,
    "ssm_ratio": 1.0, "mlp_ratio": 1.0, "flp_ratio": 1.0, "bias": False, "scan_len": 4,
}  # fmt: skip


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """restorecli checkpoints of tiny networks (they carry arch + config), and one official-style file."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    configs = {
        "sr2": ("mair", {**TINY_MAIR, "upscale": 2, "upsampler": "pixelshuffledirect"}),
        "sr3": ("mair", {**TINY_MAIR, "upscale": 3, "upsampler": "pixelshuffledirect"}),
        "same": ("mair", {**TINY_MAIR, "upscale": 1, "upsampler": ""}),
        "unet": ("mairunet", TINY_UNET),
    }
    paths = {}
    for key, (arch, config) in configs.items():
        paths[key] = folder / f"{key}.safetensors"
        models.save_checkpoint(paths[key], models.build_arch(arch, config), arch, config)
    # An official BasicSR-style file: {"params": state_dict}, architecture known only from its keys.
    official = models.build_arch("mair", {**TINY_MAIR, "upscale": 2, "upsampler": "pixelshuffledirect"})
    paths["anonymous"] = folder / "anonymous.pth"
    torch.save({"params": official.state_dict()}, paths["anonymous"])
    return paths


def write_png(path: Path, height: int = 12, width: int = 16, channels: int = 3, dtype: type = np.uint8) -> Path:
    peak = np.iinfo(dtype).max
    shape = (height, width) if channels == 1 else (height, width, channels)
    pixels = (np.random.default_rng(1).random(shape) * peak).astype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), pixels)
    return path


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """Run the console entry point in-process: (exit code, stdout, stderr), errors formatted as users see them."""
    monkeypatch.setattr(sys, "argv", ["restore", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    out, err = capsys.readouterr()
    return code, out, err


def leftovers(folder: Path) -> list[Path]:
    """Temporary or partial files anywhere below a folder."""
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".part"]


# --- every subcommand end to end ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "key", "scale", "suffix"),
    [
        (["sr", "--scale", "2"], "sr2", 2, "_x2"),
        (["sr"], "sr3", 3, "_x3"),  # scale taken from the checkpoint
        (["denoise", "--sigma", "25"], "same", 1, "_denoised"),
        (["denoise", "--real"], "unet", 1, "_denoised"),
        (["deblur"], "unet", 1, "_deblurred"),
        (["dehaze", "--variant", "indoor"], "unet", 1, "_dehazed"),
    ],
)
def test_subcommands_end_to_end(tmp_path: Path, weights: dict[str, Path], args: list[str], key: str, scale: int, suffix: str) -> None:
    source = write_png(tmp_path / "in" / "photo.png", 12, 16)
    result = CliRunner().invoke(app, [*args, str(source), "--weights", str(weights[key]), "--json", "--tile", "0"])
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    [entry] = document["files"]
    output = source.with_name(f"photo{suffix}.png")
    assert entry["status"] == "ok" and entry["output"] == str(output)
    assert entry["weights_sha256"] == document["weights_sha256"] and len(entry["weights_sha256"]) == 64
    assert entry["device"] == "cpu" and entry["tile"]["size"] == 0 and entry["model"] is None
    assert cv2.imread(str(output), cv2.IMREAD_UNCHANGED).shape == (12 * scale, 16 * scale, 3)
    assert document["summary"] == {**document["summary"], "ok": 1, "failed": 0}


def test_help_lists_shared_options_and_imports_no_torch() -> None:
    result = CliRunner().invoke(app, ["denoise", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--sigma", "--real", "--recursive", "--output", "--suffix", "--ext", "--model", "--weights",
                   "--tile", "--tile-overlap", "--device", "--precision", "--ensemble", "--overwrite", "--json",
                   "--quiet", "--report", "--manifest", "--cache-dir", "--allow-unverified"):  # fmt: skip
        assert option in result.stdout
    probe = "import sys, restorecli.cli; print(sorted(m for m in ('torch', 'numpy', 'cv2') if m in sys.modules))"
    clean_env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # no site hooks
    repo_root = Path(__file__).resolve().parents[1]
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=clean_env, cwd=repo_root).stdout
    assert loaded.strip() == "[]"


# --- image kinds round-trip ---------------------------------------------------------------------


def test_depth_grey_alpha_and_exif_orientation_survive(tmp_path: Path, weights: dict[str, Path], capsys, monkeypatch) -> None:
    folder = tmp_path / "in"
    write_png(folder / "deep.png", 10, 14, 3, np.uint16)
    write_png(folder / "grey.png", 10, 14, 1)
    write_png(folder / "rgba.png", 10, 14, 4)
    write_png(folder / "deep.tif", 10, 14, 1, np.uint16)
    jpeg = cv2.imencode(".jpg", np.zeros((10, 14, 3), np.uint8))[1].tobytes()
    exif = b"Exif\x00\x00II*\x00" + struct.pack("<IHHHIHHI", 8, 1, 0x0112, 3, 1, 6, 0, 0)  # orientation 6
    (folder / "portrait.jpg").write_bytes(jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + jpeg[2:])

    code, out, err = run_cli(["sr", folder, "-o", tmp_path / "out", "--weights", weights["sr2"], "--json"], capsys, monkeypatch)
    assert code == 0, err
    read = lambda name: cv2.imread(str(tmp_path / "out" / name), cv2.IMREAD_UNCHANGED)  # noqa: E731
    assert read("deep_x2.png").dtype == np.uint16 and read("deep_x2.png").shape == (20, 28, 3)
    assert read("deep_x2.tif").dtype == np.uint16 and read("deep_x2.tif").shape == (20, 28)
    assert read("grey_x2.png").shape == (20, 28)
    rgba_in, rgba_out = read("../in/rgba.png"), read("rgba_x2.png")
    assert rgba_out.shape == (20, 28, 4)
    np.testing.assert_allclose(rgba_out[..., 3].mean(), rgba_in[..., 3].mean(), atol=8)  # alpha kept, resized
    assert read("portrait_x2.jpg").shape == (28, 20, 3)  # rotated to display orientation, then upscaled
    notes = {Path(entry["input"]).name: entry["notes"] for entry in json.loads(out)["files"]}
    assert notes["portrait.jpg"] == ["EXIF orientation 6 applied"]


def test_icc_profile_is_carried_to_png_and_jpeg_outputs(tmp_path: Path, weights: dict[str, Path], capsys, monkeypatch) -> None:
    from restorecli import io

    header = bytearray(128)
    header[:4], header[16:20], header[36:40] = (136).to_bytes(4, "big"), b"RGB ", b"acsp"
    profile = bytes(header) + b"tagdata!"
    pixels = np.random.default_rng(2).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    for name in ("p3.png", "p3.jpg"):
        io.write_image(tmp_path / "in" / name, io.Image(color=pixels, icc_profile=profile))

    code, out, err = run_cli(["denoise", tmp_path / "in", "-o", tmp_path / "out", "--weights", weights["same"], "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert io.read_image(tmp_path / "out" / "p3_denoised.png").icc_profile == profile
    assert io.read_image(tmp_path / "out" / "p3_denoised.jpg").icc_profile == profile
    notes = {Path(entry["input"]).name: entry["notes"] for entry in json.loads(out)["files"]}
    assert notes == {"p3.png": [], "p3.jpg": []}


def test_rgba_to_jpg_is_written_as_png(tmp_path: Path, weights: dict[str, Path], capsys, monkeypatch) -> None:
    source = write_png(tmp_path / "logo.png", 8, 8, 4)
    code, out, _ = run_cli(["sr", source, "--weights", weights["sr2"], "--ext", "jpg", "--json", "-q"], capsys, monkeypatch)
    [entry] = json.loads(out)["files"]
    assert code == 0 and entry["output"].endswith("logo_x2.png") and "keep the alpha" in entry["notes"][0]


# --- batches ------------------------------------------------------------------------------------


def test_batch_goes_on_past_a_bad_file(tmp_path: Path, weights: dict[str, Path], capsys, monkeypatch) -> None:
    folder = tmp_path / "in"
    write_png(folder / "a.png")
    (folder / "b.png").write_text("not really a png")
    write_png(folder / "c.png")
    (folder / "readme.txt").write_text("notes")
    (folder / ".DS_Store").write_bytes(b"\x00")
    code, out, err = run_cli(["sr", folder, "--weights", weights["sr2"], "--json"], capsys, monkeypatch)
    assert code == 1
    statuses = {Path(e["input"]).name: e["status"] for e in json.loads(out)["files"]}
    assert statuses == {"readme.txt": "skipped", "a.png": "ok", "b.png": "failed", "c.png": "ok"}
    assert (folder / "a_x2.png").is_file() and (folder / "c_x2.png").is_file() and not (folder / "b_x2.png").exists()
    assert err.count("Error: ") == 1 and "b.png: not an image" in err and "Skipped" in err and "readme.txt" in err


def test_names_with_brackets_newlines_and_escapes_are_shown_as_they_are(tmp_path: Path, weights: dict[str, Path], capsys, monkeypatch) -> None:
    # rich read "[edited]" as a style tag (the table showed "IMG .jpg"); a newline split the Error line in two
    folder = tmp_path / "in"
    write_png(folder / "IMG [edited].png")
    write_png(folder / "[red] b.png")
    (folder / "bad\nname.png").write_text("not really a png")
    (folder / "esc\x1b[31m.png").write_text("not one either")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["sr", "in", "-o", "out", "--weights", weights["sr2"]], capsys, monkeypatch)
    assert code == 1
    assert sorted(err.splitlines()) == [
        "Error: in/bad\\nname.png: not an image: named .png but its content is not PNG, JPEG, WebP, BMP, TIFF or GIF (starts with b'not real')",
        "Error: in/esc\\x1b[31m.png: not an image: named .png but its content is not PNG, JPEG, WebP, BMP, TIFF or GIF (starts with b'not one ')",
    ]
    for shown in ("in/IMG [edited].png", "out/IMG [edited]_x2.png", "in/[red] b.png", "out/[red] b_x2.png", "in/bad\\nname.png", "in/esc\\x1b[31m.png"):
        assert shown in out
    assert "\x1b" not in out and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["IMG [edited]_x2.png", "[red] b_x2.png"]


def test_existing_outputs_are_skipped_then_overwritten(tmp_path: Path, weights: dict[str, Path], capsys, monkeypatch) -> None:
    source = write_png(tmp_path / "a.png")
    target = tmp_path / "a_x2.png"
    target.write_bytes(b"old")
    code, out, err = run_cli(["sr", source, "--weights", weights["sr2"], "--json"], capsys, monkeypatch)
    assert code == 0 and json.loads(out)["files"][0]["status"] == "skipped" and target.read_bytes() == b"old"
    assert "output exists" in err
    code, out, _ = run_cli(["sr", source, "--weights", weights["sr2"], "--json", "--overwrite"], capsys, monkeypatch)
    assert code == 0 and cv2.imread(str(target)).shape == (24, 32, 3)


def test_output_tree_is_mirrored_and_reruns_skip_own_outputs(tmp_path: Path, weights: dict[str, Path], capsys, monkeypatch) -> None:
    write_png(tmp_path / "in" / "top.png")
    write_png(tmp_path / "in" / "sub" / "deep" / "low.png")
    out_dir = tmp_path / "out"
    code, _, err = run_cli(["sr", tmp_path / "in", "-r", "-o", out_dir, "--weights", weights["sr2"], "--ext", "webp"], capsys, monkeypatch)
    assert code == 0, err
    assert sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.webp")) == ["sub/deep/low_x2.webp", "top_x2.webp"]
    # next to the inputs, twice: the second run must not restore top_x2.png again
    for _ in range(2):
        code, out, err = run_cli(["sr", tmp_path / "in", "--weights", weights["sr2"], "--json"], capsys, monkeypatch)
        assert code == 0, err
    assert not (tmp_path / "in" / "top_x2_x2.png").exists()
    assert "looks like an output of this command" in err


def test_discovery_sorts_skips_and_survives_symlink_loops(tmp_path: Path) -> None:
    from restorecli.batch import OutputRule, discover_inputs

    write_png(tmp_path / "b.png")
    write_png(tmp_path / "a" / "z.png")
    (tmp_path / "a" / "loop").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "noext").write_bytes((tmp_path / "b.png").read_bytes())  # an image by content
    (tmp_path / "notes.md").write_text("# hi")
    images, skipped = discover_inputs([str(tmp_path)], recursive=True)
    assert [p.path.relative_to(tmp_path).as_posix() for p in images] == ["a/z.png", "b.png", "noext"]
    assert [s.path.name for s in skipped] == ["notes.md"]
    rule = OutputRule(tmp_path / "out", "_x2", "same")
    assert [rule.path_for(p).relative_to(tmp_path).as_posix() for p in images] == ["out/a/z_x2.png", "out/b_x2.png", "out/noext_x2.png"]


def test_broken_links_and_special_files_are_reported_not_passed_over(tmp_path: Path) -> None:
    import os

    from restorecli.batch import discover_inputs
    from restorecli.errors import UsageError

    write_png(tmp_path / "b.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "loop1.png").symlink_to(tmp_path / "loop2.png")
    (tmp_path / "loop2.png").symlink_to(tmp_path / "loop1.png")
    os.mkfifo(tmp_path / "pipe.png")
    images, skipped = discover_inputs([str(tmp_path)], recursive=False)
    assert [p.path.name for p in images] == ["b.png"]
    reasons = {s.path.name: s.reason for s in skipped}
    assert set(reasons) == {"gone.png", "loop1.png", "loop2.png", "pipe.png"}
    assert "target is missing" in reasons["gone.png"] and "not a regular file" in reasons["pipe.png"]
    with pytest.raises(UsageError, match="'.*loop1.png' is a symbolic link whose target is missing"):
        discover_inputs([str(tmp_path / "loop1.png")], recursive=False)
    images, skipped = discover_inputs([str(tmp_path / "*.png")], recursive=False)
    assert [p.path.name for p in images] == ["b.png"]
    assert [s.path.name for s in skipped] == ["gone.png", "loop1.png", "loop2.png"]  # a pattern skips the pipe


def test_folders_a_pattern_matches_are_reported(tmp_path: Path) -> None:
    """`restore sr 'photos/*'`: a subfolder the pattern matches is listed as skipped (as a
    subfolder of a named folder is), not passed over without a word; with --recursive and **
    the pattern itself walks into it."""
    from restorecli.batch import discover_inputs

    write_png(tmp_path / "a.png")
    write_png(tmp_path / "holiday" / "b.png")
    images, skipped = discover_inputs([str(tmp_path / "*")], recursive=False)
    assert [p.path.name for p in images] == ["a.png"]
    assert [(s.path.name, s.reason) for s in skipped] == [
        ("holiday", "folder matched by the pattern (pass the folder itself, or --recursive with **)")
    ]
    images, skipped = discover_inputs([str(tmp_path / "**")], recursive=True)
    assert sorted(p.path.name for p in images) == ["a.png", "b.png"] and skipped == []


def test_a_subfolder_that_cannot_be_listed_is_reported_and_the_rest_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from restorecli.batch import discover_inputs
    from restorecli.errors import UsageError

    write_png(tmp_path / "top.png")
    write_png(tmp_path / "open" / "a.png")
    write_png(tmp_path / "locked" / "b.png")
    listing = Path.iterdir

    def iterdir(self: Path):  # chmod 000 does not stop root, who runs the tests in containers
        if self.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    images, skipped = discover_inputs([str(tmp_path)], recursive=True)
    assert [item.path.relative_to(tmp_path).as_posix() for item in images] == ["open/a.png", "top.png"]
    assert [(s.path.name, s.reason) for s in skipped] == [("locked", "cannot list this folder: Permission denied")]
    with pytest.raises(UsageError, match="cannot list folder .*locked: Permission denied"):
        discover_inputs([str(tmp_path / "locked")], recursive=True)  # the named folder itself: nothing to do


def test_inputs_whose_output_folder_is_read_only_fail_before_any_work(
    tmp_path: Path, weights: dict[str, Path], capsys, monkeypatch
) -> None:
    """An output folder this process may not write fails its inputs up front (one line each),
    not after restoring each of them; the other inputs of the batch are processed."""
    from restorecli import batch

    write_png(tmp_path / "ro" / "a.png")
    write_png(tmp_path / "ro" / "b.png")
    ok = write_png(tmp_path / "rw" / "c.png")
    access = os.access

    def fake_access(path, mode, **kwargs):  # chmod does not stop root, who runs the tests in containers
        return False if Path(path).name == "ro" and mode & os.W_OK else access(path, mode, **kwargs)

    monkeypatch.setattr(batch.os, "access", fake_access)
    run_batch, processed = batch.run_batch, []

    def spy(items, *args, **kwargs):
        processed.extend(item.path.name for _, item in items)
        return run_batch(items, *args, **kwargs)

    monkeypatch.setattr(batch, "run_batch", spy)
    code, out, err = run_cli(["denoise", tmp_path / "ro", tmp_path / "rw", "--weights", weights["same"], "--json"], capsys, monkeypatch)
    assert code == 1, err
    files = {Path(entry["input"]).name: entry for entry in json.loads(out)["files"]}
    assert files["c.png"]["status"] == "ok" and ok.with_name("c_denoised.png").exists()
    for name in ("a.png", "b.png"):
        assert files[name]["status"] == "failed"
        assert "cannot write to the folder" in files[name]["error"] and files[name]["error"].endswith("(expected a writable output folder)")
    assert processed == ["c.png"]  # nothing restored for the read-only folder
    assert sorted(p.name for p in (tmp_path / "ro").iterdir()) == ["a.png", "b.png"]


# --- an output file (-o clean.png) -------------------------------------------------------------


def test_output_file_receives_the_one_input_in_its_extensions_format(tmp_path: Path, weights: dict[str, Path], capsys, monkeypatch) -> None:
    source = write_png(tmp_path / "noisy.png")
    target = tmp_path / "new" / "clean.jpg"  # its folder does not exist yet
    code, out, err = run_cli(["denoise", source, "-o", target, "--weights", weights["same"], "--ext", "jpg", "--json"], capsys, monkeypatch)
    assert code == 0, err
    [entry] = json.loads(out)["files"]
    assert entry["status"] == "ok" and entry["output"] == str(target)
    assert target.read_bytes()[:2] == b"\xff\xd8"  # JPEG, as the name says, from a PNG input
    assert cv2.imread(str(target)).shape == (12, 16, 3)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["new", "new/clean.jpg", "noisy.png"]
    assert leftovers(tmp_path) == []
    monkeypatch.setenv("COLUMNS", "400")  # the table folds long cells; the path is checked whole
    code, out, err = run_cli(["denoise", source, "-o", tmp_path / "CLEAN.PNG", "--weights", weights["same"]], capsys, monkeypatch)
    assert code == 0, err
    assert (tmp_path / "CLEAN.PNG").read_bytes()[:4] == b"\x89PNG" and str(tmp_path / "CLEAN.PNG") in out  # the table too


def test_existing_output_file_is_skipped_then_overwritten(tmp_path: Path, weights: dict[str, Path], capsys, monkeypatch) -> None:
    source = write_png(tmp_path / "a.png")
    target = tmp_path / "big.png"
    target.write_bytes(b"old")
    args = ["sr", source, "-o", target, "--weights", weights["sr2"], "--json"]
    code, out, err = run_cli(args, capsys, monkeypatch)
    [entry] = json.loads(out)["files"]
    assert code == 0 and entry["status"] == "skipped" and entry["output"] == str(target) and target.read_bytes() == b"old"
    assert "output exists" in err
    code, out, err = run_cli([*args, "--overwrite"], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["files"][0]["status"] == "ok" and cv2.imread(str(target)).shape == (24, 32, 3)


def test_existing_folder_named_like_an_image_stays_a_folder(tmp_path: Path, weights: dict[str, Path], capsys, monkeypatch) -> None:
    source = write_png(tmp_path / "a.png")
    (tmp_path / "out.png").mkdir()
    code, out, err = run_cli(["sr", source, "-o", tmp_path / "out.png", "--weights", weights["sr2"], "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["files"][0]["output"] == str(tmp_path / "out.png" / "a_x2.png")
    assert (tmp_path / "out.png" / "a_x2.png").is_file()


def test_output_with_a_trailing_slash_is_a_folder_whatever_its_name(tmp_path: Path, weights: dict[str, Path], capsys, monkeypatch) -> None:
    source = write_png(tmp_path / "a.png")
    code, out, err = run_cli(["sr", source, "-o", f"{tmp_path / 'out.png'}/", "--weights", weights["sr2"], "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["files"][0]["output"] == str(tmp_path / "out.png" / "a_x2.png")
    assert (tmp_path / "out.png" / "a_x2.png").is_file()


def test_output_names_a_file_only_with_an_image_extension_and_no_folder(tmp_path: Path) -> None:
    from restorecli.batch import output_file
    from restorecli.errors import UsageError

    (tmp_path / "dir.png").mkdir()
    assert output_file(None, suffix=None, ext="same") is None
    assert output_file(tmp_path / "out", suffix="_x", ext="same") is None
    assert output_file(tmp_path / "dir.png", suffix="_x", ext="jpg") is None
    assert output_file(tmp_path / "a.JPEG", suffix=None, ext="jpg") == tmp_path / "a.JPEG"
    assert output_file(tmp_path / "a.tiff", suffix=None, ext="same") == tmp_path / "a.tiff"
    assert output_file(tmp_path / "a.tiff", suffix="_x", ext="jpg", names_folder=True) is None
    (tmp_path / "notes").write_text("x")
    (tmp_path / "b.png").write_bytes(b"x")
    for target, names_folder in ((tmp_path / "notes", False), (tmp_path / "b.png", True)):  # out.png/ with a file out.png
        with pytest.raises(UsageError, match=rf"--output: expected a folder, got the existing file .*{target.name}$"):
            output_file(target, suffix=None, ext="same", names_folder=names_folder)
    with pytest.raises(UsageError, match=r"--output: .*a\.gif: expected an extension of .*, got '\.gif'"):
        output_file(tmp_path / "a.gif", suffix=None, ext="same")


def test_quiet_means_nothing_on_stderr(tmp_path: Path, weights: dict[str, Path], capsys, monkeypatch) -> None:
    write_png(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"")
    (tmp_path / "c.txt").write_text("x")
    code, out, err = run_cli(["sr", tmp_path, "--weights", weights["sr2"], "--quiet"], capsys, monkeypatch)
    assert code == 1 and err == ""
    assert "1 restored, 1 failed, 1 skipped" in out  # the summary table is data: stdout


def test_report_file_and_ensemble(tmp_path: Path, weights: dict[str, Path], capsys, monkeypatch) -> None:
    source = write_png(tmp_path / "a.png", 40, 40)
    report = tmp_path / "reports" / "run.json"
    args = ["denoise", source, "--weights", weights["same"], "--ensemble", "--tile", "32", "--tile-overlap", "8", "--report", report]
    code, out, _ = run_cli(args, capsys, monkeypatch)
    entry = json.loads(report.read_text())["files"][0]
    assert code == 0 and "restore denoise" in out
    assert entry["tile"] == {"requested": 32, "size": 32, "overlap": 8, "tiles": 8 * 4}


def test_unwritable_report_file_still_shows_what_the_batch_did(tmp_path: Path, weights: dict[str, Path], capsys, monkeypatch) -> None:
    source = write_png(tmp_path / "a.png")
    (tmp_path / "blocker").write_text("a file where the report's folder should be")
    args = ["sr", source, "--weights", weights["sr2"], "--json", "--report", tmp_path / "blocker" / "run.json"]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 1 and json.loads(out)["summary"]["ok"] == 1 and (tmp_path / "a_x2.png").is_file()
    blocker = tmp_path / "blocker"
    assert err.splitlines() == [f"Error: {blocker}: cannot write into this folder: {blocker} is a file, not a folder"]


def test_ctrl_c_keeps_finished_outputs_and_prints_the_summary(tmp_path: Path, weights: dict[str, Path], capsys, monkeypatch) -> None:
    for name in ("a", "b", "c"):
        write_png(tmp_path / f"{name}.png")
    calls = []
    original = ImageRestorer.restore

    def interrupted_on_second(self, image, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, image, **kwargs)

    monkeypatch.setattr(ImageRestorer, "restore", interrupted_on_second)
    code, out, err = run_cli(["sr", tmp_path, "--weights", weights["sr2"]], capsys, monkeypatch)
    assert code == 130
    assert (tmp_path / "a_x2.png").is_file() and not (tmp_path / "b_x2.png").exists() and not (tmp_path / "c_x2.png").exists()
    assert "interrupted by Ctrl-C (1 not started)" in out and "Interrupted at" in err
    assert leftovers(tmp_path) == []


# --- bad inputs: one line, right exit code, no partial files ------------------------------------


def _bad_cases(tmp: Path, weights: dict[str, Path]) -> dict[str, tuple[list, int, str]]:
    good = write_png(tmp / "good" / "a.png")
    (tmp / "empty_dir").mkdir()
    (tmp / "zero.png").write_bytes(b"")
    data = cv2.imencode(".png", np.zeros((16, 16, 3), np.uint8))[1].tobytes()
    (tmp / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp / "text.png").write_text("hello")
    (tmp / "photo.ppm").write_bytes(b"P6\n2 2\n255\n" + bytes(12))  # netpbm: not a format this tool reads
    (tmp / "blocker").write_text("a file where a folder should be")
    rgba = write_png(tmp / "logo.png", channels=4)
    boxed = write_png(tmp / "boxed" / "a.png")
    (tmp / "boxed" / "a_x2.png").mkdir()  # a folder where the output goes
    sr = ["--weights", weights["sr2"]]
    never_loaded = ["--weights", tmp / "not-there.pth"]  # these are refused before the network is loaded
    return {
        "missing file": (["sr", tmp / "nope.png", *sr], 2, "does not exist; expected an image file, a folder or a glob"),
        "empty folder": (["sr", tmp / "empty_dir", *sr], 2, "no images found in"),
        "unsupported format": (["sr", tmp / "photo.ppm", *sr], 2,
                               f"no images found in {tmp / 'photo.ppm'}; {tmp / 'photo.ppm'}: not an image (expected PNG"),
        "0-byte file": (["sr", tmp / "zero.png", *sr], 1, "file is empty (0 bytes)"),
        "truncated png": (["sr", tmp / "cut.png", *sr], 1, "truncated or corrupt"),
        "text named .png": (["sr", tmp / "text.png", *sr], 1, "named .png but its content is not"),
        "unsupported scale": (["sr", good, "--scale", "5", *sr], 2, "--scale: expected 2, 3 or 4, got 5"),
        "scale differs from weights": (["sr", good, "--scale", "4", *sr], 2, "x2 network; expected x4"),
        "unknown model": (["sr", good, "--model", "mair-sr-x5"], 1, "unknown model 'mair-sr-x5'"),
        "weights of another arch": (["sr", good, "--model", "mair-light-t-x2", "--weights", weights["anonymous"]], 1, "do not fit mair-light-t-x2"),
        "sr weights for denoise": (["denoise", good, "--weights", weights["sr2"]], 2, "x2 network; expected x1"),
        "anonymous unknown layout": (["deblur", good, "--weights", weights["anonymous"]], 1, "match no known MaIR model"),
        "unwritable output folder": (["sr", good, *sr, "-o", tmp / "blocker" / "out"], 1, "cannot write into this folder"),
        "output equals input": (["sr", good, *sr, "-o", good.parent, "--suffix", ""], 1, "would overwrite an input"),
        "fp16 on cpu": (["sr", good, *sr, "--device", "cpu", "--precision", "fp16"], 1, "fp16 needs a CUDA device"),
        "bad --ext": (["sr", good, *sr, "--ext", "gif"], 2, "--ext: expected one of same, png, jpg, webp, tif, got 'gif'"),
        "sigma and real": (["denoise", good, "--sigma", "15", "--real"], 2, "exclude each other"),
        "folder to output file": (["sr", good.parent, *never_loaded, "-o", tmp / "big.png"], 2,
                                  (f"--output: expected a folder for the input folder {good.parent} (1 image), "
                                   f"got the file name {tmp / 'big.png'} (give a folder, or one input file)")),
        "two inputs to output file": (["sr", good, rgba, *never_loaded, "-o", tmp / "big.png"], 2, "--output: expected a folder for 2 inputs, got the file name"),
        "glob to output file": (["sr", tmp / "good" / "*.png", *never_loaded, "-o", tmp / "big.png"], 2, "for the pattern"),
        "suffix with output file": (["sr", good, *never_loaded, "-o", tmp / "big.png", "--suffix", "_x2"], 2,
                                    f"--suffix: expected none with the output file {tmp / 'big.png'} (its name is used as given), got '_x2'"),
        "ext against output file": (["sr", good, *never_loaded, "-o", tmp / "big.png", "--ext", "jpg"], 2,
                                    f"--ext: expected none or the format of the output file {tmp / 'big.png'} (PNG), got 'jpg'"),
        "gif output file": (["sr", good, *never_loaded, "-o", tmp / "big.gif"], 2, "got '.gif'"),
        "output file equals input": (["sr", good, *sr, "-o", good], 1, "would overwrite an input; choose another --output name"),
        "alpha to jpg output file": (["sr", rgba, *sr, "-o", tmp / "big.jpg"], 1,
                                     (f"{tmp / 'big.jpg'}: {rgba} has an alpha channel, which .jpg files cannot keep; "
                                      "expected an output name ending .png")),
        "report onto an input": (["sr", good, *sr, "--report", good], 2, f"--report: expected a file that is not an input, got the input {good}"),
        "report onto an output": (["sr", good, *sr, "--report", good.parent / "a_x2.png"], 2,
                                  f"--report: expected a file that is not an output, got the output of {good}"),
        "report onto a folder": (["sr", good, *sr, "--report", tmp / "empty_dir"], 2, f"--report: expected a file name, got the folder {tmp / 'empty_dir'}"),
        "output name is a folder": (["sr", boxed, *sr], 1,  # not skipped as an existing output
                                    f"{tmp / 'boxed' / 'a_x2.png'}: is a folder, expected an output file path"),
    }


@pytest.mark.parametrize(
    "case",
    ["missing file", "empty folder", "0-byte file", "truncated png", "text named .png", "unsupported scale",
     "scale differs from weights", "unknown model", "weights of another arch", "sr weights for denoise",
     "anonymous unknown layout", "unwritable output folder", "output equals input", "fp16 on cpu", "bad --ext",
     "sigma and real", "folder to output file", "two inputs to output file", "glob to output file",
     "suffix with output file", "ext against output file", "gif output file", "output file equals input",
     "alpha to jpg output file", "report onto an input", "report onto an output", "report onto a folder",
     "output name is a folder"],  # fmt: skip
)
def test_bad_input_gives_one_line_error(tmp_path: Path, weights: dict[str, Path], capsys, monkeypatch, case: str) -> None:
    args, expected_code, message = _bad_cases(tmp_path, weights)[case]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code, _, err = run_cli(args, capsys, monkeypatch)
    error_lines = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert code == expected_code, err
    assert len(error_lines) == 1 and message in error_lines[0], err
    assert "Traceback" not in err
    after = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert after == set(before), "no output (partial or not) may appear"
    assert all(p.read_bytes() == data for p, data in before.items()), "inputs are never modified"


def test_error_through_the_console_script(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "restorecli", "sr", str(tmp_path / "missing.png")], capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"Error: input '{tmp_path / 'missing.png'}' does not exist; expected an image file, a folder or a glob"
    ]


# --- official checkpoints -----------------------------------------------------------------------


def test_official_checkpoint_recognised_from_its_keys(tmp_path: Path, capsys, monkeypatch) -> None:
    official = tmp_path / "MaIR_T_lightSR_x2.pth"
    torch.save({"params": models.build("mair-light-t-x2").state_dict()}, official)
    source = write_png(tmp_path / "a.png", 8, 8)
    code, out, err = run_cli(["sr", source, "--weights", official, "--json", "--tile", "0"], capsys, monkeypatch)
    document = json.loads(out)
    assert code == 0, err
    assert document["model"] == "mair-light-t-x2" and document["scale"] == 2


def test_model_name_resolved_through_a_manifest(tmp_path: Path, weights: dict[str, Path], capsys, monkeypatch) -> None:
    import hashlib

    checkpoint = weights["sr2"]
    entry = {
        "name": "tiny-sr-x2", "arch": "mair", "task": "sr", "scale": 2,
        "config": {**TINY_MAIR, "upscale": 2, "upsampler": "pixelshuffledirect"},
        "files": [{"filename": "tiny.safetensors", "url": checkpoint.as_uri(),
                   "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(), "size": checkpoint.stat().st_size}],
    }  # fmt: skip
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"version": 1, "models": [entry]}))
    source = write_png(tmp_path / "a.png", 8, 8)
    args = ["sr", source, "--model", "tiny-sr-x2", "--manifest", manifest, "--cache-dir", tmp_path / "cache", "--json", "--overwrite"]
    sources = []
    for _ in range(2):  # downloaded (file:// works offline), then found in the cache
        code, out, err = run_cli(args, capsys, monkeypatch)
        assert code == 0, err
        document = json.loads(out)
        assert document["model"] == "tiny-sr-x2" and document["files"][0]["out_width"] == 16
        sources.append(document["weights_source"])
    assert sources == ["download", "cache"]


# --- several processes (torchrun) ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_ranks_split_the_inputs_and_rank_0_reports_all(tmp_path: Path, weights: dict[str, Path]) -> None:
    for name in ("a", "b", "c"):
        write_png(tmp_path / "in" / f"{name}.png", 8, 8)
    port = str(_free_port())
    processes = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}  # fmt: skip
        command = [sys.executable, "-m", "restorecli", "sr", str(tmp_path / "in"), "--weights", str(weights["sr2"]), "--json", "--device", "cpu", "--tile", "0"]
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert outputs[1][0] == ""  # only rank 0 writes the summary
    files = json.loads(outputs[0][0])["files"]
    assert [(Path(f["input"]).name, f["rank"], f["status"]) for f in files] == [("a.png", 0, "ok"), ("b.png", 1, "ok"), ("c.png", 0, "ok")]
