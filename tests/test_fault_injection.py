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
import subprocess
import sys
import time
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
MARK_AFTER_FIRST_SCORE = """
import pathlib, restorecli.evaluate as ev
_score = ev._metrics
def _marked(*args, **kwargs):
    scores = _score(*args, **kwargs)
    pathlib.Path({marker!r}).touch()
    return scores
ev._metrics = _marked
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
    marker = tmp_path / "first-image-scored"
    args = ["eval", "-d", "Set5", "--data-dir", "data", "--weights", tiny_x2, "-s", "2", "--protocol", "whole", "--out", "report"]
    process = start(args, tmp_path, setup=MARK_AFTER_FIRST_SCORE.format(marker=str(marker)))
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
