"""Checkpoint files that are not checkpoints, or that would run code: one line of ours, nothing run.

The malicious files are built with ``pickle.dumps`` of objects whose ``__reduce__`` calls
``os.system``; nothing here ever unpickles them except through restorecli, and the command they
carry would create a marker file, so every test also proves it never ran.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from restorecli.errors import CheckpointError
from restorecli.models import read_checkpoint, save_checkpoint
from restorecli.models.checkpoint import load_file, pickle_globals
from restorecli.train import read_training_checkpoint

SYSTEM = f"{os.system.__module__}.system"  # posix.system here, nt.system on Windows
RANDOM = random.Random(4096).randbytes(4096)  # like `head -c4096 /dev/urandom`, but fixed
assert RANDOM[:1] != b"\x80" and not RANDOM.startswith(b"PK")  # not even the start of a pickle or zip


class RunsCommand:
    """Unpickling this calls ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def evil_raw(path: Path, marker: Path, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    path.write_bytes(pickle.dumps({"params": {"w": RunsCommand(f"touch {marker}")}}, protocol=protocol))
    return path


def evil_zip(path: Path, marker: Path) -> Path:
    """A real torch.save zip whose data.pkl is replaced by one that calls os.system."""
    buffer = io.BytesIO()
    torch.save({"params": {"w": torch.zeros(2)}}, buffer)
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(path, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps({"params": {"w": RunsCommand(f"touch {marker}")}}, protocol=2)
            target.writestr(item, data)
    return path


def random_bytes(path: Path) -> Path:
    path.write_bytes(RANDOM)
    return path


def refused(path: Path, names: str) -> str:
    return f"refused {path}: it references {names}, which weights-only loading does not allow"


def load_error(path: Path) -> str:
    """The message of loading ``path``, checking that it is one line and no warning escaped."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError) as info:
            load_file(path)
    assert caught == []
    message = str(info.value)
    assert "\n" not in message and "weights_only" not in message
    return message


# --------------------------------------------------------------------------- the loader


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_raw_pickles_that_would_run_code_are_refused_by_name(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "MARKER"
    path = evil_raw(tmp_path / "r.pth", marker, protocol)
    assert load_error(path) == refused(path, f"`{SYSTEM}`")
    assert not marker.exists()


def test_a_torch_zip_whose_pickle_would_run_code_is_refused_by_name(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = evil_zip(tmp_path / "r.pth", marker)
    assert pickle_globals(path) == (True, [SYSTEM])
    assert load_error(path) == refused(path, f"`{SYSTEM}`")
    assert not marker.exists()


def test_every_loader_entry_point_words_it_the_same(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = evil_zip(tmp_path / "r.pth", marker)
    for read in (read_checkpoint, read_training_checkpoint):
        with pytest.raises(CheckpointError) as info:
            read(path)
        assert str(info.value) == refused(path, f"`{SYSTEM}`")
    assert not marker.exists()


def test_many_refused_globals_are_summarised(tmp_path: Path) -> None:
    calls = [(os.system, ("true",)), (shutil.rmtree, ("x",)), (eval, ("1",)), (exec, ("1",)), (subprocess.call, ("true",))]
    body = b"".join(pickle.dumps(function, protocol=2)[2:-1] + pickle.dumps(args, protocol=2)[2:-1] + b"R0" for function, args in calls)
    path = tmp_path / "many.pth"
    path.write_bytes(b"\x80\x02" + body + b"N.")
    expected = refused(path, f"`{SYSTEM}`, `shutil.rmtree`, `builtins.eval` and 2 more")
    assert load_error(path) == expected


def test_a_pickled_module_is_refused_by_its_class(tmp_path: Path) -> None:
    path = tmp_path / "module.pth"
    torch.save(torch.nn.Conv2d(1, 1, 1), path)
    assert load_error(path) == refused(path, "`torch.nn.modules.conv.Conv2d`")


@pytest.mark.parametrize(("name", "content"), [("r.pth", RANDOM), ("r.safetensors", RANDOM), ("text.ckpt", b"not a checkpoint")])
def test_files_that_are_not_checkpoints(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert load_error(path) == f"{path} is not a PyTorch or safetensors checkpoint"


def test_a_zip_without_torch_pickle_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")
    assert load_error(path) == f"{path} is not a PyTorch or safetensors checkpoint"


def test_cut_short_files_are_damaged_not_refused(tmp_path: Path) -> None:
    state = {"params": {"w": torch.arange(64.0)}}
    for name, options in (("zip.pth", {}), ("legacy.pth", {"_use_new_zipfile_serialization": False})):
        whole = tmp_path / name
        torch.save(state, whole, **options)
        cut = tmp_path / f"cut-{name}"
        cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
        assert load_error(cut).startswith(f"{cut} is a damaged or unsupported PyTorch checkpoint: ")
    whole = tmp_path / "w.safetensors"
    save_checkpoint(whole, {"w": torch.arange(4096.0)}, "mair", {})
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert load_error(cut).startswith(f"{cut} is a damaged safetensors file: ")


def test_real_checkpoints_still_load_in_every_format(tmp_path: Path) -> None:
    state = {"params": {"w": torch.arange(6.0)}, "iteration": 3}
    torch.save(state, tmp_path / "zip.pth")
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    save_checkpoint(tmp_path / "w.safetensors", state["params"], "mair", {"upscale": 2}, name="n")
    for name in ("zip.pth", "legacy.pth", "w.safetensors"):
        checkpoint = read_checkpoint(tmp_path / name)
        assert torch.equal(checkpoint.state_dict["w"], torch.arange(6.0))
    assert pickle_globals(tmp_path / "legacy.pth")[0] is True
    assert read_checkpoint(tmp_path / "w.safetensors").arch == "mair"
    with pytest.raises(CheckpointError, match="not a restorecli training checkpoint"):
        read_training_checkpoint(tmp_path / "w.safetensors")


# --------------------------------------------------------------------------- the commands


def run_restore(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RESTORECLI_CACHE": str(cwd / "cache"), "RESTORECLI_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "restorecli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def write_input(folder: Path) -> None:
    import cv2
    import numpy as np

    cv2.imwrite(str(folder / "s.png"), np.full((16, 16, 3), 128, np.uint8))


@pytest.mark.parametrize(
    ("command", "kind"),
    [
        (["sr", "--weights", "{file}", "s.png", "-o", "out"], "random"),
        (["sr", "--weights", "{file}", "s.png", "-o", "out"], "raw"),
        (["sr", "--weights", "{file}", "s.png", "-o", "out"], "zip"),
        (["models", "import", "{file}"], "raw"),
        (["models", "import", "{file}"], "random"),
        (["train", "--resume", "{file}"], "zip"),
        (["train", "--resume", "{file}"], "raw"),
    ],
)
def test_commands_print_one_line_and_never_run_the_payload(tmp_path: Path, command: list[str], kind: str) -> None:
    write_input(tmp_path)
    marker = tmp_path / "MARKER"
    if kind == "random":
        random_bytes(tmp_path / "r.pth")
        expected = "r.pth is not a PyTorch or safetensors checkpoint"
    else:
        (evil_raw if kind == "raw" else evil_zip)(tmp_path / "r.pth", marker)
        expected = refused(Path("r.pth"), f"`{SYSTEM}`")
    result = run_restore([part.replace("{file}", "r.pth") for part in command], tmp_path)
    assert (result.returncode, result.stderr) == (1, f"Error: {expected}\n"), result.stderr
    assert result.stdout == "" and not marker.exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache" / "models").exists()


def test_checkpoint_with_a_long_name_is_written(tmp_path: Path) -> None:
    """The temporary name beside a 250-character output name still fits the folder's limit."""
    import torch

    from restorecli.models.checkpoint import save_checkpoint

    path = tmp_path / ("w" * 240 + ".safetensors")
    save_checkpoint(path, {"weight": torch.zeros(2)}, "mair", {"upscale": 2})
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == [path.name]
