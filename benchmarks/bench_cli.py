"""Time and peak host memory of `restore sr --scale 4`, whole image against tiled, on the CPU.

Each run is a fresh `python -m restorecli sr ...` process, so the numbers include nothing of an
earlier run. Peak memory is the child's peak resident set (``wait4`` rusage); the child gets an
address-space limit so that a whole-image run that does not fit fails cleanly instead of waking
the kernel's OOM killer. Weights are random (same cost as trained ones): a restorecli checkpoint
of the named architecture is written to a temporary folder first.

    python benchmarks/bench_cli.py --model mair-light-t-x4 --sizes 256 512 1024 --tiles 0 128
    python benchmarks/bench_cli.py --model mair-sr-x4 --sizes 256 --tiles 0 128 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass
class Run:
    """One benchmark run."""

    size: int
    tile: int
    overlap: int
    status: str
    wall_seconds: float
    restore_seconds: float | None
    peak_rss_mib: float
    tiles: int | None
    error: str | None


def make_input(path: Path, size: int) -> None:
    """A smooth random image with some texture (what a photo-like input costs is the same as noise)."""
    rng = np.random.default_rng(size)
    coarse = rng.random((max(2, size // 16), max(2, size // 16), 3)).astype(np.float32)
    image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC) + 0.1 * rng.random((size, size, 3))
    cv2.imwrite(str(path), np.clip(image * 255, 0, 255).astype(np.uint8))


def make_weights(model: str, path: Path) -> None:
    from dataclasses import asdict as config_dict

    from restorecli import models

    spec = models.spec(model)
    models.save_checkpoint(path, models.build(model), spec.arch, config_dict(spec.config), name=model)


def run_once(image: Path, weights: Path, out_dir: Path, *, tile: int, overlap: int, threads: int, limit_gib: float) -> Run:
    command = [
        sys.executable, "-m", "restorecli", "sr", str(image), "--scale", "4", "--weights", str(weights),
        "--device", "cpu", "--tile", str(tile), "--tile-overlap", str(overlap), "-o", str(out_dir),
        "--suffix", f"_t{tile}", "--overwrite", "--json", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "RESTORECLI_OFFLINE": "1"}
    limit = int(limit_gib * 1024**3)

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, preexec_fn=cap_memory)
    stdout_chunks = []
    assert child.stdout is not None
    for chunk in iter(lambda: child.stdout.read(65536), b""):
        stdout_chunks.append(chunk)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    stderr = child.stderr.read().decode(errors="replace") if child.stderr else ""
    peak_mib = usage.ru_maxrss / 1024  # Linux reports KiB
    size = cv2.imread(str(image)).shape[0]
    try:
        entry = json.loads(b"".join(stdout_chunks))["files"][0]
    except (ValueError, IndexError, KeyError):
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {status}"
        return Run(size, tile, overlap, "failed", wall, None, peak_mib, None, last[:200])
    tiles = entry["tile"]["tiles"] if entry.get("tile") else None
    return Run(size, tile, overlap, entry["status"], wall, entry["seconds"], peak_mib, tiles, entry["error"])


def psnr_between(a: Path, b: Path) -> float | None:
    """PSNR (dB, 8-bit) between two outputs: how far tiled output is from whole-image output."""
    if not (a.is_file() and b.is_file()):
        return None
    x, y = cv2.imread(str(a)).astype(np.float64), cv2.imread(str(b)).astype(np.float64)
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mair-sr-x4", help="architecture (random weights)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024], help="square input sides")
    parser.add_argument("--tiles", type=int, nargs="+", default=[0, 128], help="tile sides; 0 = whole image")
    parser.add_argument("--overlap", type=int, default=16, help="tile overlap, input pixels")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the child (1: no oversubscription on a shared box)")
    parser.add_argument("--mem-limit-gib", type=float, default=16.0, help="address-space cap of the child")
    parser.add_argument("--json-out", type=Path, help="also write the runs as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        weights = folder / f"{args.model}.safetensors"
        make_weights(args.model, weights)
        # Warm-up: the first process may build or load the compiled scan kernel; a compiler running
        # inside a measured child would count towards its peak memory.
        warm = folder / "warm.png"
        make_input(warm, 16)
        run_once(warm, weights, folder / "warm_out", tile=0, overlap=0, threads=args.threads, limit_gib=args.mem_limit_gib)
        runs: list[Run] = []
        fidelity: dict[str, float | None] = {}
        for size in args.sizes:
            image = folder / f"input_{size}.png"
            make_input(image, size)
            for tile in args.tiles:
                run = run_once(
                    image, weights, folder / "out", tile=tile, overlap=args.overlap, threads=args.threads, limit_gib=args.mem_limit_gib
                )
                runs.append(run)
                print(json.dumps(asdict(run)), flush=True)
            whole = folder / "out" / f"input_{size}_t0.png"
            for tile in args.tiles:
                if tile:
                    fidelity[f"{size}/tile{tile}"] = psnr_between(whole, folder / "out" / f"input_{size}_t{tile}.png")

    print()
    print(f"model {args.model} (random weights), x4, CPU threads {args.threads}, address-space cap {args.mem_limit_gib} GiB")
    print()
    print("| input | mode | tiles | status | restore s | wall s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        mode = "whole image" if run.tile == 0 else f"tile {run.tile}, overlap {run.overlap}"
        restore_s = f"{run.restore_seconds:.1f}" if run.restore_seconds is not None else "–"
        status = run.status if run.status == "ok" else f"{run.status}: {run.error}"
        print(f"| {run.size}² | {mode} | {run.tiles or '–'} | {status} | {restore_s} | {run.wall_seconds:.1f} | {run.peak_rss_mib:.0f} |")
    if fidelity:
        print()
        for key, value in fidelity.items():
            print(f"PSNR tiled vs whole, {key}: " + ("n/a (a run failed)" if value is None else f"{value:.2f} dB"))
    if args.json_out:
        args.json_out.write_text(json.dumps({"runs": [asdict(r) for r in runs], "psnr_tiled_vs_whole": fidelity}, indent=2))


if __name__ == "__main__":
    main()
