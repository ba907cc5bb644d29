"""Tile limits and offline --weights URLs as the user sees them: exit code and one `Error:` line."""

from __future__ import annotations

import json

from pathlib import Path

import pytest
from test_checkpoint_loading import run_restore, write_input


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--tile", "1"], "--tile 1: expected 0 (whole image) or a tile of 32 px or more"),
        (
            ["--tile", "32", "--tile-overlap", "64"],
            "--tile-overlap 64 is not below half of --tile 32; expected --tile-overlap 0 to 15, or --tile 129 or more",
        ),
    ],
)
def test_tiles_outside_the_limits_are_usage_errors(tmp_path: Path, options: list[str], message: str) -> None:
    write_input(tmp_path)
    result = run_restore(["sr", "--scale", "4", "s.png", "-o", "out", *options], tmp_path)
    assert (result.returncode, result.stderr, result.stdout) == (2, f"Error: {message}\n", "")
    assert not (tmp_path / "out").exists()


def test_small_tile_alone_gets_an_overlap_below_half(tmp_path: Path) -> None:
    """Without --tile-overlap the overlap is automatic: 32, or just under half of a smaller tile."""
    write_input(tmp_path)
    result = run_restore(["sr", "--scale", "4", "s.png", "-o", "out", "--tile", "48", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tile_overlap"] == 23


def test_smallest_tile_runs(tmp_path: Path) -> None:
    write_input(tmp_path)
    result = run_restore(["sr", "--scale", "4", "s.png", "-o", "out", "--tile", "32", "--tile-overlap", "15"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "s_x4.png").is_file()


def test_offline_weights_url_reports_offline_first(tmp_path: Path) -> None:
    write_input(tmp_path)
    url = "https://weights.example/w.pth"
    result = run_restore(["sr", "--weights", url, "s.png", "-o", "out"], tmp_path)
    expected = (
        f"Error: {url} is not in the cache and offline mode (RESTORECLI_OFFLINE=1) forbids downloading it; "
        "unset RESTORECLI_OFFLINE, or download the file elsewhere and pass its path to --weights\n"
    )
    assert (result.returncode, result.stderr) == (1, expected)
