"""Fault injection: real stop signals, hostile names and headers, and corrupted image bytes.

Every case runs as a user would meet it, mostly as a ``python -m restorecli`` subprocess, and
checks the same promises: no traceback, one ``Error:`` line (or the command's own summary),
the documented exit code, finished outputs whole, nothing partial left, inputs unchanged.
Networks are tiny random-weight checkpoints made here; the whole module takes well under a
minute on one core.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_cli_restore import TINY_MAIR, leftovers, write_png
from test_download import FileServer
from test_train import TINY_YAML, smooth_images

from restorecli import models
from restorecli.train import read_training_checkpoint

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

REPO_ROOT = Path(__file__).resolve().parents[1]

# Runs the entry point after a setup snippet (argv[1]) that instruments the library for a test:
# a marker file when a step is done, or pinned data-set files served by a local server.
DRIVER = "import sys\nexec(sys.argv[1])\nfrom restorecli.cli import main\nsys.argv = ['restore', *sys.argv[2:]]\nmain()\n"
# Marks the start of the second image (its ground truth is read), when the first is recorded:
# a mark right after the first score left a window before the first result was kept, which a
# loaded machine hit.
MARK_AT_SECOND_IMAGE = """
import pathlib, restorecli.evaluate as ev
_read = ev.read_rgb8
_reads = []
def _marked(*args, **kwargs):
    _reads.append(args)
    if len(_reads) == 2:
        pathlib.Path({marker!r}).touch()
    return _read(*args, **kwargs)
ev.read_rgb8 = _marked
"""
PIN_DATASET = """
import json, restorecli.datasets as ds
_pins = json.loads({pins!r})
ds.load_pins = lambda: _pins
"""


@pytest.fixture(scope="module")
def tiny_x2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A restorecli checkpoint of a tiny random x2 MaIR (arch and config inside)."""
    path = tmp_path_factory.mktemp("weights") / "tiny_x2.safetensors"
    config = {**TINY_MAIR, "upscale": 2, "upsampler": "pixelshuffledirect"}
    models.save_checkpoint(path, models.build_arch("mair", config), "mair", config)
    return path


def environment(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RESTORECLI_")}
    env.update({"RESTORECLI_OFFLINE": "1", "COLUMNS": "200", "PYTHONPATH": str(REPO_ROOT), **extra})
    return env


def start(args: list[object], cwd: Path, *, setup: str | None = None, **env: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "restorecli"] if setup is None else [sys.executable, "-c", DRIVER, setup]
    return subprocess.Popen(
        [*command, *map(str, args)], cwd=cwd, env=environment(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run(args: list[object], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "restorecli", *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=environment(**env), capture_output=True, text=True, timeout=120, check=False)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[str], timeout: float = 60.0) -> None:
    """Poll until ``condition`` holds; fail with the process's output if it ends or times out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"condition not reached (exit {process.returncode}):\n{out}\n{err}")
        time.sleep(0.01)


def stop(process: subprocess.Popen[str], signum: int) -> tuple[int, str, str]:
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert "Traceback" not in err, err
    return process.returncode, out, err


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


# --- stop signals: SIGTERM and SIGHUP behave like Ctrl-C ------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_restore_batch_stops_cleanly_on_a_signal(tmp_path: Path, tiny_x2: Path, signum: int) -> None:
    """a.png finishes, the signal lands during b.png (large, slow), c.png never starts."""
    write_png(tmp_path / "in" / "a.png", 16, 16)
    write_png(tmp_path / "in" / "b.png", 160, 160)
    write_png(tmp_path / "in" / "c.png", 16, 16)
    inputs = snapshot(tmp_path / "in")
    first = tmp_path / "out" / "a_x2.png"
    process = start(["sr", "in", "-o", "out", "--weights", tiny_x2, "--tile", "0", "--json"], tmp_path)
    wait_for(first.exists, process)
    code, out, err = stop(process, signum)
    name = signal.Signals(signum).name
    assert code == 128 + signum, err
    document = json.loads(out)
    summary = document["summary"]
    assert (summary["ok"], summary["interrupted"], summary["not_started"], summary["stopped_by"]) == (1, 1, 1, name)
    assert [entry["status"] for entry in document["files"]] == ["ok", "interrupted"]
    assert f"interrupted ({name}); no output written" in document["files"][1]["error"]
    assert "Interrupted at in/b.png; finished outputs are kept" in err
    assert cv2.imread(str(first), cv2.IMREAD_UNCHANGED).shape == (32, 32, 3)  # whole, decodable
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_x2.png"]
    assert leftovers(tmp_path) == [] and snapshot(tmp_path / "in") == inputs


def test_eval_reports_the_images_done_on_sigterm(tmp_path: Path, tiny_x2: Path) -> None:
    hr = tmp_path / "data" / "Set5" / "HR"
    for name, size in (("a", 24), ("b", 192), ("c", 24)):
        write_png(hr / f"{name}.png", size, size)
    marker = tmp_path / "second-image-started"
    args = ["eval", "-d", "Set5", "--data-dir", "data", "--weights", tiny_x2, "-s", "2", "--protocol", "whole", "--out", "report"]
    process = start(args, tmp_path, setup=MARK_AT_SECOND_IMAGE.format(marker=str(marker)))
    wait_for(marker.exists, process)
    code, out, err = stop(process, signal.SIGTERM)
    assert code == 143, err
    assert "Interrupted (SIGTERM) after 1 of 3 images" in err and "Set5: PSNR" in out
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["stopped_by"] == "SIGTERM" and report["images_total"] == 3 and len(report["images"]) == 1
    assert leftovers(tmp_path / "report") == []


def test_train_writes_a_resumable_checkpoint_on_sigterm(tmp_path: Path) -> None:
    hq = smooth_images(tmp_path / "hq", 2)
    config = tmp_path / "tiny.yml"
    config.write_text(TINY_YAML.format(dim=8, depths="[1]", hq=hq, out=tmp_path / "run"), encoding="utf-8")
    overrides = ["schedule.iterations=100000", "val.every=0", "output.log_every=1", "output.save_every=0"]
    process = start(["train", "--config", config, *(f"--set={o}" for o in overrides)], tmp_path)
    assert process.stderr is not None
    for line in process.stderr:  # log lines on stderr (not a terminal): wait for the first iteration
        if "iter 1/" in line:
            break
    code, out, err = stop(process, signal.SIGTERM)
    assert code == 143, err
    summary = json.loads(out)
    assert summary["interrupted"] and summary["iteration"] >= 1
    assert f"Interrupted (SIGTERM) at iteration {summary['iteration']}; resume with --resume" in err
    state = read_training_checkpoint(tmp_path / "run" / "latest.pth")
    assert state["iteration"] == summary["iteration"]
    assert leftovers(tmp_path / "run") == []


def test_models_download_keeps_the_partial_transfer_on_sigterm(tmp_path: Path) -> None:
    payload = b"restorecli test weights " * 4000
    with FileServer() as server:
        url = server.add("/w.safetensors", payload, "stall")
        entry = {
            "name": "private-dn", "arch": "mair", "task": "denoise", "config": {},
            "files": [{"filename": "w.safetensors", "url": url, "sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}],
        }  # fmt: skip
        (tmp_path / "m.json").write_text(json.dumps({"version": 1, "models": [entry]}))
        env = {"RESTORECLI_MANIFEST": str(tmp_path / "m.json"), "RESTORECLI_CACHE": str(tmp_path / "cache")}
        process = start(["models", "download", "private-dn"], tmp_path, RESTORECLI_OFFLINE="0", **env)
        wait_for(lambda: any((tmp_path / "cache").rglob("*.part")), process)
        time.sleep(0.2)  # inside the stalled transfer
        code, out, err = stop(process, signal.SIGTERM)
        assert code == 143 and out == "", err
        assert "Interrupted (SIGTERM) before private-dn was stored; `restore models download private-dn` resumes" in err
        files = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())
        assert files == ["w.safetensors.part"]  # no lock, nothing under the final name
        done = run(["models", "download", "private-dn"], tmp_path, RESTORECLI_OFFLINE="0", **env)
        assert done.returncode == 0, done.stderr
        assert Path(done.stdout.strip()).read_bytes() == payload
        assert server.requests[-1] == ("/w.safetensors", "bytes=10-")  # resumed after the 10 bytes kept


def test_datasets_download_keeps_verified_files_on_sigterm(tmp_path: Path) -> None:
    first, second = b"first file " * 100, b"second file " * 100
    with FileServer() as server:
        server.add("/datasets/Set5/HR/a.png", first)
        server.add("/datasets/Set5/HR/b.png", second, "stall")
        files = [
            {"path": f"HR/{name}.png", "source": f"{name}.png", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for name, data in (("a", first), ("b", second))
        ]
        pins = json.dumps({"Set5": {"repo": "example/sets", "commit": "0" * 40, "files": files}})
        env = {"RESTORECLI_MIRROR": server.url(""), "RESTORECLI_OFFLINE": "0"}
        process = start(["datasets", "download", "Set5", "--dest", "sets"], tmp_path, setup=PIN_DATASET.format(pins=pins), **env)
        wait_for(lambda: (tmp_path / "sets" / "Set5" / "HR" / "b.png.part").exists(), process)
        time.sleep(0.2)
        code, out, err = stop(process, signal.SIGTERM)
    assert code == 143 and out == "", err
    assert "Interrupted (SIGTERM) after 1 of 2 files of Set5; verified files are kept" in err
    assert (tmp_path / "sets" / "Set5" / "HR" / "a.png").read_bytes() == first
    names = sorted(p.name for p in (tmp_path / "sets").rglob("*") if p.is_file())
    assert names == ["a.png", "b.png.part"]  # no completion marker, no lock


# --- file names at the file system's limit ----------------------------------------------------------


def test_long_input_names_work_and_over_long_output_names_are_one_line(tmp_path: Path, tiny_x2: Path) -> None:
    """A name 5 bytes under the limit gets an output 2 under it (its temporary name must be short);
    one 1 byte under gets an output 2 over it: a one-line error naming the limit, before any work."""
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    fits, too_long = "x" * (limit - 9) + ".png", "y" * (limit - 5) + ".png"
    write_png(tmp_path / "in" / fits, 8, 8)
    write_png(tmp_path / "in" / too_long, 8, 8)
    inputs = snapshot(tmp_path / "in")
    done = run(["sr", "in", "-o", "out", "--weights", tiny_x2, "--tile", "0"], tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    [error] = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert f"the output name is {limit + 2} bytes long, over the file system's limit of {limit} bytes" in error
    assert "shorter --suffix" in error
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x" * (limit - 9) + "_x2.png"]
    assert leftovers(tmp_path) == [] and snapshot(tmp_path / "in") == inputs


def test_temporary_names_are_short_and_cut_between_characters(tmp_path: Path) -> None:
    from restorecli import io

    for name, limit in (("é" * 200 + ".png", 255), ("a" * 40, 20), ("b.png", 255)):
        prefix = io.temporary_prefix(name, limit)
        assert len(os.fsencode(prefix)) + 8 + len(io.TEMPORARY_SUFFIX) <= min(limit, 34 + 8 + 5)
        assert name.startswith(prefix[1:].rstrip(".")) and "\udcc3" not in prefix  # no half characters
    target = tmp_path / ("é" * 127 + "x")  # 255 bytes in UTF-8
    io.write_bytes_atomic(target, b"data")
    assert [p.name for p in tmp_path.iterdir()] == [target.name] and target.read_bytes() == b"data"


# --- two inputs, one output name ---------------------------------------------------------------------


def test_inputs_sharing_an_output_name_fail_before_any_work(tmp_path: Path, tiny_x2: Path) -> None:
    write_png(tmp_path / "d" / "good.png", 8, 8)
    assert cv2.imwrite(str(tmp_path / "d" / "good.bmp"), np.zeros((8, 8, 3), np.uint8))
    write_png(tmp_path / "d" / "other.png", 8, 8)
    message = "d/good.png: same output as d/good.bmp (out/good_x2.png); use --suffix or distinct names"
    for extra in ([], ["--overwrite"]):
        done = run(["sr", "d", "--ext", "png", "-o", "out", "--weights", tiny_x2, "--tile", "0", "--json", *extra], tmp_path)
        assert done.returncode == 1, done.stderr
        assert [line for line in done.stderr.splitlines() if line.startswith("Error: ")] == [f"Error: {message}"]
        statuses = {Path(entry["input"]).name: entry["status"] for entry in json.loads(done.stdout)["files"]}
        assert statuses == {"good.bmp": "ok", "good.png": "failed", "other.png": "ok"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good_x2.png", "other_x2.png"]


# --- sizes declared in headers, codecs' own messages --------------------------------------------------


def png_declaring(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` and whose image data is a few bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_pixel_limit_is_checked_from_the_header_and_codecs_stay_quiet(
    tmp_path: Path, tiny_x2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "huge.png").write_bytes(png_declaring(100_000, 100_000))
    (tmp_path / "in" / "rgba16.png").write_bytes(png_declaring(32_000, 32_000, 16, 6))  # under 2G, data missing
    inputs = snapshot(tmp_path / "in")
    done = run(["sr", "in", "-o", "out", "--weights", tiny_x2, "--max-pixels", "2G"], tmp_path)
    assert done.returncode == 1
    errors = done.stderr.splitlines()
    assert errors == [
        "Error: in/huge.png: declares 100000×100000 px (10 Gpx), over the limit of 2 Gpx; "
        "raise it with --max-pixels or RESTORECLI_MAX_PIXELS",
        "Error: in/rgba16.png: cannot decode this PNG file: it is truncated or corrupt (Not enough image data)",
    ], done.stderr  # libpng's own "libpng error: ..." line never reaches the terminal
    assert not (tmp_path / "out").exists() and snapshot(tmp_path / "in") == inputs
    from restorecli import io
    from restorecli.errors import ImageTooLargeError

    monkeypatch.delenv("RESTORECLI_MAX_PIXELS", raising=False)
    with pytest.raises(ImageTooLargeError, match=r"declares 32000×32000 px \(1.02 Gpx\), over the limit of 1 Gpx;"):
        io.read_image(tmp_path / "in" / "rgba16.png")  # the default limit


def test_pixel_limit_from_the_environment_and_its_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from restorecli import io
    from restorecli.errors import ConfigError, ImageTooLargeError

    source = write_png(tmp_path / "a.png", 12, 16)
    monkeypatch.setenv("RESTORECLI_MAX_PIXELS", "150")
    with pytest.raises(ImageTooLargeError, match=r"declares 16×12 px \(192 px\), over the limit of 150 px"):
        io.read_image(source)
    assert io.read_image(source, max_pixels=192).width == 16  # the argument wins over the environment
    monkeypatch.setenv("RESTORECLI_MAX_PIXELS", "lots")
    with pytest.raises(ConfigError, match="RESTORECLI_MAX_PIXELS: expected a pixel count"):
        io.read_image(source)
    assert [io.parse_pixel_count(text) for text in ("50000000", "5e7", "50M", "1.5Gpx", "2k")] == [
        50_000_000, 50_000_000, 50_000_000, 1_500_000_000, 2000,
    ]  # fmt: skip


# --- pages and frames ------------------------------------------------------------------------------


def test_first_page_or_frame_is_processed_and_the_rest_noted(tmp_path: Path, tiny_x2: Path) -> None:
    frames = [np.full((8, 8, 3), 40 * i, np.uint8) for i in range(3)]
    (tmp_path / "in").mkdir()
    assert cv2.imwritemulti(str(tmp_path / "in" / "pages.tif"), frames)
    animation = cv2.Animation()
    animation.frames, animation.durations = frames, [100] * 3
    for ext in (".gif", ".webp"):
        ok, encoded = cv2.imencodeanimation(ext, animation)
        assert ok
        (tmp_path / "in" / f"anim{ext}").write_bytes(encoded.tobytes())
    done = run(["sr", "in", "-o", "out", "--weights", tiny_x2, "--tile", "0", "--json"], tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    document = json.loads(done.stdout)
    notes = {Path(entry["input"]).name: entry["notes"] for entry in document["files"]}
    assert notes == {
        "anim.gif": ["frame 1 of 3 processed", "written as PNG (GIF is read, not written)"],
        "anim.webp": ["frame 1 of 3 processed"],
        "pages.tif": ["page 1 of 3 processed"],
    }
    assert document["summary"]["multi_frame"] == 3
    first = cv2.imread(str(tmp_path / "out" / "pages_x2.tif"), cv2.IMREAD_UNCHANGED)
    assert first.shape == (16, 16, 3)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["anim_x2.png", "anim_x2.webp", "pages_x2.tif"]


# --- corrupted bytes ---------------------------------------------------------------------------------


def originals() -> dict[str, bytes]:
    """Small valid files of each format read, with some structure worth corrupting."""
    rng = np.random.default_rng(7)
    pixels = (rng.random((24, 32, 3)) * 255).astype(np.uint8)
    files = {ext: cv2.imencode(ext, pixels)[1].tobytes() for ext in (".png", ".jpg", ".tif", ".webp", ".bmp")}
    files[".png16"] = cv2.imencode(".png", pixels.astype(np.uint16) * 257)[1].tobytes()
    files[".tifs"] = cv2.imencodemulti(".tif", [pixels, pixels[::-1]])[1].tobytes()
    animation = cv2.Animation()
    animation.frames, animation.durations = [pixels, pixels[::-1]], [100, 100]
    files[".gif"] = cv2.imencodeanimation(".gif", animation)[1].tobytes()
    return files


def corrupt(data: bytes, rng: np.random.Generator) -> bytes:
    """Truncate, flip bits anywhere, or rewrite bytes of the header (first 64 bytes)."""
    damaged = bytearray(data)
    kind = rng.integers(3)
    if kind == 0:
        return bytes(damaged[: rng.integers(1, len(damaged))])
    if kind == 1:
        for _ in range(rng.integers(1, 9)):
            damaged[rng.integers(len(damaged))] ^= 1 << int(rng.integers(8))
    else:
        for _ in range(rng.integers(1, 4)):
            damaged[rng.integers(min(64, len(damaged)))] = rng.integers(256)
    return bytes(damaged)


def test_fuzzed_files_are_read_or_refused_with_our_error(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """480 corrupted files through the library's reader: an image or ImageReadError, and silence."""
    from restorecli import io
    from restorecli.errors import ImageReadError

    rng = np.random.default_rng(2024)
    outcomes = {"read": 0, "refused": 0}
    capfd.readouterr()
    for ext, data in originals().items():
        for case in range(60):
            damaged = corrupt(data, rng)
            path = tmp_path / f"{case}{ext[:4]}"
            path.write_bytes(damaged)
            try:
                image = io.read_image(path)
            except ImageReadError as error:
                assert str(error).startswith(f"{path}: ") and "\n" not in str(error)
                outcomes["refused"] += 1
            else:
                assert image.width > 0 and image.height > 0
                outcomes["read"] += 1
            assert path.read_bytes() == damaged
    out, err = capfd.readouterr()
    assert (out, err) == ("", ""), "a codec wrote to the terminal"
    assert outcomes["refused"] > 200 and outcomes["read"] > 50, outcomes  # both paths are exercised


def test_fuzzed_files_through_the_command_line(tmp_path: Path, tiny_x2: Path) -> None:
    """A handful of corrupted files in one batch: each is restored whole or named in one Error line."""
    rng = np.random.default_rng(99)
    (tmp_path / "in").mkdir()
    for ext, data in originals().items():
        if ext in (".png", ".jpg", ".tif", ".png16"):
            for case in range(2):
                (tmp_path / "in" / f"{ext[1:]}_{case}{ext[:4]}").write_bytes(corrupt(data, rng))
    inputs = snapshot(tmp_path / "in")
    done = run(["sr", "in", "-o", "out", "--weights", tiny_x2, "--tile", "0", "--json"], tmp_path)
    assert done.returncode in (0, 1) and "Traceback" not in done.stderr
    assert all(line.startswith("Error: in/") for line in done.stderr.splitlines()), done.stderr
    files = json.loads(done.stdout)["files"]
    assert len(files) == len(inputs)
    for entry in files:
        output = Path(tmp_path / entry["output"])
        if entry["status"] == "ok":
            assert cv2.imread(str(output), cv2.IMREAD_UNCHANGED).shape[:2] == (2 * entry["height"], 2 * entry["width"])
        else:
            assert entry["status"] == "failed" and not output.exists()
            assert sum(entry["input"] in line for line in done.stderr.splitlines()) == 1
    assert done.returncode == int(any(entry["status"] == "failed" for entry in files))
    assert any(entry["status"] == "failed" for entry in files)
    assert leftovers(tmp_path) == [] and snapshot(tmp_path / "in") == inputs


def test_a_signal_inside_a_deferred_block_is_raised_when_it_ends() -> None:
    from restorecli import interrupts

    steps = []
    with pytest.raises(interrupts.Interrupted) as raised, interrupts.stop_signals() as stops:
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs here, and holds the signal
            steps.append("finished")
    assert steps == ["finished"] and raised.value.signum == signal.SIGTERM and stops.unreported is raised.value
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the previous handler is back
