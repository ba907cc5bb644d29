"""The bundled restorecli-trained models reproduce the numbers their manifest entries claim.

Each bundled SR entry lists ``metrics`` such as ``Set5_x4: {psnr_y, ssim_y, bicubic_psnr_y}``; the
same numbers appear in the README and docs/training.md. Re-measuring them with ``restore eval``
guards the shipped files and the inference path (scan kernel, tiling, imresize, metrics) at once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from restorecli import hub
from restorecli.cli import app

runner = CliRunner()


def _claims() -> list[tuple[str, str, int, dict]]:
    claims = []
    for entry in hub.load_manifest().entries:
        if entry.weights.bundled is None:
            continue
        for key, values in entry.metrics.items():
            dataset, _, scale = key.partition("_x")
            claims.append((entry.name, dataset, int(scale), values))
    return claims


CLAIMS = _claims()


def test_every_bundled_model_states_its_numbers() -> None:
    bundled = {e.name for e in hub.load_manifest().entries if e.weights.bundled is not None}
    assert bundled and bundled == {name for name, *_ in CLAIMS}


@pytest.mark.parametrize(("name", "dataset", "scale", "claimed"), CLAIMS, ids=[f"{c[0]}-{c[1]}" for c in CLAIMS])
def test_bundled_model_reproduces_its_manifest_metrics(
    shared_datasets: Path, name: str, dataset: str, scale: int, claimed: dict
) -> None:
    args = ["eval", "--dataset", dataset, "--scale", str(scale), "--model", name]
    result = runner.invoke(app, [*args, "--data-dir", str(shared_datasets), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    mean = json.loads(result.stdout)["mean"]
    # The manifest rounds to 0.01 dB / 1e-4.
    assert mean["psnr_y"] == pytest.approx(claimed["psnr_y"], abs=0.006)
    assert mean["ssim_y"] == pytest.approx(claimed["ssim_y"], abs=6e-4)
    baseline = runner.invoke(app, [*args[:5], "--baseline", "bicubic", "--data-dir", str(shared_datasets), "--json"])
    assert baseline.exit_code == 0, baseline.output
    assert json.loads(baseline.stdout)["mean"]["psnr_y"] == pytest.approx(claimed["bicubic_psnr_y"], abs=0.006)
    if dataset == "Set5":
        # The bundled-model target: at least 1 dB over bicubic on Set5.
        assert mean["psnr_y"] - claimed["bicubic_psnr_y"] >= 1.0
