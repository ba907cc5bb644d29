"""GPU check of the Triton scan backend and the GPU restore path, in one run with a time budget.

Usage:
    python benchmarks/gpu_check.py [--out DIR] [--rehearse] [--budget-s 420]

Run by ``benchmarks/gpu_check.sh`` after the GPU tests. Sections, each recorded in
``gpu_check.json`` and ``gpu_check.md`` under ``--out``:

* ``parity``: triton vs ref vs the PyTorch GPU scan on MaIR's scan shapes (light-T: K·Di = 264,
  N = 1; classic: 1440, N = 16), values and gradients, float32 and bfloat16 inputs; and the fused
  ordered scan against its gathered reference on NSS orders;
* ``throughput``: the ``restore sr`` path (``restorecli.inference.ImageRestorer``: host image,
  batched tiles on the device, stitching) in megapixels per second for mair-light-t-x4 (1024²
  input) and mair-sr-x4 (768²) with random weights, fp32 and bf16, tiles 256 and 512;
* ``scan_variants``: one network forward with the fused Triton scan, the unfused one (permuted
  copies + the plain Triton kernel) and the PyTorch GPU scan;
* ``memory``: peak GPU memory against image size at tile 256 (bf16);
* ``training``: a short bf16-autocast training run (forward, L1 loss, backward, AdamW).

Sections that would pass the budget are skipped and say so. ``--rehearse`` (automatic without
CUDA) runs every section it can on the CPU at toy sizes -- parity through Triton's interpreter,
the harness with the ``cpu`` backend -- to prove the script before GPU time is spent; its numbers
mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODELS = ("mair-light-t-x4", "mair-sr-x4")
THROUGHPUT_SIDE = {"mair-light-t-x4": 1024, "mair-sr-x4": 768}  # input sides; both give several 512² tiles
MEMORY_SIDES = {"mair-light-t-x4": (256, 512, 1024, 2048), "mair-sr-x4": (256, 512, 1024)}
SCAN_SHAPES = {"light-t": (66, 1), "classic": (360, 16)}  # (Di, N); K = 4 directions


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    parser.add_argument("--rehearse", action="store_true", help="CPU dry run at toy sizes (automatic without CUDA)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="seconds for all sections together")
    args = parser.parse_args(argv)
    import torch

    rehearse = args.rehearse or not torch.cuda.is_available()
    if rehearse:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are imported
    check = Check(rehearse=rehearse, deadline=time.monotonic() + args.budget_s)
    check.run("environment", environment)
    check.run("parity", parity)
    check.run("throughput", throughput)
    check.run("scan_variants", scan_variants)
    check.run("memory", memory)
    check.run("training", training)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(check.report, indent=2) + "\n", encoding="utf-8")
    (args.out / "gpu_check.md").write_text(markdown(check.report), encoding="utf-8")
    sys.stderr.write(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}\n")
    failed = [name for name, section in check.report["sections"].items() if section["status"] == "failed"]
    return 1 if failed else 0


class Check:
    """Runs sections against a deadline and collects their results."""

    def __init__(self, *, rehearse: bool, deadline: float) -> None:
        self.rehearse = rehearse
        self.deadline = deadline
        self.report: dict[str, Any] = {"rehearsal": rehearse, "sections": {}}

    @property
    def device(self) -> str:
        return "cpu" if self.rehearse else "cuda"

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, section: Callable[[Check], dict[str, Any]]) -> None:
        sys.stderr.write(f"[gpu_check] {name} ({self.time_left():.0f} s left)\n")
        started = time.monotonic()
        if self.time_left() <= 0:
            self.report["sections"][name] = {"status": "skipped", "why": "time budget spent"}
            return
        try:
            result = section(self)
            status = "ok"
        except Exception as error:  # noqa: BLE001 -- one failed section must not lose the others
            result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
            status = "failed"
        self.report["sections"][name] = {"status": status, "seconds": round(time.monotonic() - started, 1), **result}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _seconds(step: Callable[[], object], device: str, repeats: int = 3) -> float:
    """Best of ``repeats`` timed calls after one warm-up (restorecli/bench.py's timing)."""
    import torch

    from restorecli.bench import _best_seconds

    step()
    return _best_seconds(step, repeats, torch.device(device))


def environment(check: Check) -> dict[str, Any]:
    import torch

    from restorecli.ops import available_backends
    from restorecli.ops.selective_scan import implementation_label

    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "backends": available_backends()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError as error:
        info["triton"] = f"not importable: {error}"
    if not check.rehearse:
        info["device"] = torch.cuda.get_device_name()
        info["auto_label"] = implementation_label(None, "cuda")
    info["triton_label"] = implementation_label("triton", check.device)
    return info


def _rel(got: Any, want: Any) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-300))


def parity(check: Check) -> dict[str, Any]:
    """Relative errors of triton and the torch GPU scan against ``ref`` (float64 on the device)."""
    import torch

    from restorecli.ops import scan_ref, scan_triton
    from restorecli.ops.ordered_scan import ordered_scan_reference, prepare_ordered_inputs
    from restorecli.ops.scan_order import mair_scan_order
    from restorecli.ops.scan_ref import OrderedScanInputs
    from restorecli.ops.selective_scan import prepare_inputs

    device = check.device
    side = 4 if check.rehearse else 64
    rows = []
    for name, (inner, n_state) in SCAN_SHAPES.items():
        inner = 6 if check.rehearse else inner
        for dtype in (torch.float32, torch.bfloat16):
            gen = torch.Generator(device="cpu").manual_seed(0)
            dim, length = 4 * inner, side * side
            values = [
                torch.randn(1, dim, length, generator=gen), 0.5 * torch.randn(1, dim, length, generator=gen),
                -torch.exp(torch.log(torch.arange(1, n_state + 1.0)).repeat(dim, 1)),
                torch.randn(1, 4, n_state, length, generator=gen), torch.randn(1, 4, n_state, length, generator=gen),
                torch.randn(dim, generator=gen), torch.full((dim,), -4.0),
            ]  # fmt: skip
            low = [v.to(device, dtype if i in (0, 1, 3, 4) else torch.float32) for i, v in enumerate(values)]
            exact = [v.to(device).double() for v in low]  # the same (rounded) values in float64
            grad_out = torch.randn(1, dim, length, generator=gen).to(device)
            results = {}
            for label, tensors, fn in (
                ("ref", exact, scan_ref.scan_sequential),
                ("triton", low, scan_triton.selective_scan_triton),
                ("torch", [v.float() for v in low], scan_ref.scan_chunked),
            ):
                leaves = [t.clone().requires_grad_() for t in tensors]
                prepared = prepare_inputs(*leaves, True, keep_low_precision=True)
                y = fn(prepared)
                grads = torch.autograd.grad(y, leaves, grad_out.to(y.dtype))
                results[label] = [y.detach(), *grads]
            for label in ("triton", "torch"):
                errors = [_rel(g, w) for g, w in zip(results[label], results["ref"])]
                rows.append({"shape": name, "dtype": str(dtype).removeprefix("torch."), "impl": label,
                             "y": errors[0], "grads_max": max(errors[1:])})  # fmt: skip
    # The fused ordered scan against its gathered reference, on a shifted NSS order.
    inner, n_state, rank = (6, 2, 2) if check.rehearse else (66, 1, 4)
    gen = torch.Generator(device="cpu").manual_seed(1)
    length = side * side
    tensors = [
        torch.randn(1, length, inner, generator=gen), 0.5 * torch.randn(1, length, 4 * (rank + 2 * n_state), generator=gen),
        torch.randn(4, inner, rank, generator=gen) / rank**0.5, torch.full((4 * inner,), -4.0),
        -torch.exp(torch.log(torch.arange(1, n_state + 1.0)).repeat(4 * inner, 1)), torch.randn(4 * inner, generator=gen),
    ]  # fmt: skip
    order = mair_scan_order(side, side, 4 if check.rehearse else 8, 2 if check.rehearse else 4, device)
    tensors = [t.to(device) for t in tensors]
    fused, _ = scan_triton.ordered_scan_triton(prepare_ordered_inputs(OrderedScanInputs(*tensors, order.scan, order.inverse)))
    gathered, _ = ordered_scan_reference(
        prepare_ordered_inputs(OrderedScanInputs(*(t.double() for t in tensors), order.scan, order.inverse)), backend="ref"
    )
    return {
        "rows": rows,
        "ordered_fused_vs_ref": _rel(fused, gathered),
        "side": side,
        "note": "relative errors against ref in float64 on the same (rounded) inputs; triton returns the "
        "gradients of bfloat16 inputs in bfloat16 (about 2e-3 from rounding), the torch scan computes on float32 copies",
    }


def _image(side: int) -> Any:
    import torch

    return torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))


def throughput(check: Check) -> dict[str, Any]:
    """Megapixels per second through ``ImageRestorer`` (host image in, host image out)."""
    from restorecli import models
    from restorecli.inference import ImageRestorer

    tiles = (32, 64) if check.rehearse else (256, 512)
    precisions = ("fp32",) if check.rehearse else ("fp32", "bf16")
    names = MODELS[:1] if check.rehearse else MODELS
    rows = []
    for name in names:
        side = 64 if check.rehearse else THROUGHPUT_SIDE[name]
        image = _image(side)
        for precision in precisions:
            for tile in tiles:
                if check.time_left() < 30:
                    rows.append({"model": name, "precision": precision, "tile": tile, "skipped": "time budget"})
                    continue
                restorer = ImageRestorer(models.build(name), device=check.device, precision=precision, tile=tile, tile_batch=4)
                seconds = _seconds(lambda r=restorer, i=image: r.restore(i), check.device, repeats=1)
                scale = restorer.scale
                rows.append({
                    "model": name, "precision": precision, "tile": tile, "tile_batch": restorer.tile_batch,
                    "label": restorer.scan_backend, "input_side": side, "seconds": seconds,
                    "input_mp_s": side * side / seconds / 1e6, "output_mp_s": (side * scale) ** 2 / seconds / 1e6,
                })  # fmt: skip
    return {"rows": rows}


def scan_variants(check: Check) -> dict[str, Any]:
    """One forward of mair-light-t-x4 with the fused Triton scan, the unfused one and the torch scan."""
    if check.rehearse:
        return {"skipped": "needs a GPU (Triton's interpreter runs a network far too slowly)"}
    import torch

    from restorecli import models
    from restorecli.models import blocks
    from restorecli.ops import ordered_scan, scan_cuda, scan_triton

    side = 256
    rows = []
    for name in MODELS:
        net = models.build(name, device="cuda")
        x = torch.rand(1, 3, side, side, device="cuda")
        fused = scan_triton.ordered_scan_triton
        variants = {
            "triton fused": ("triton", None, fused),
            "triton unfused (permuted copies)": ("triton", None, lambda inputs: ordered_scan.ordered_scan_reference(inputs, backend="triton")),
            "torch": ("cuda", "torch", fused),
        }
        for label, (backend, cuda_impl, ordered) in variants.items():
            if check.time_left() < 20:
                rows.append({"model": name, "variant": label, "skipped": "time budget"})
                continue
            blocks.set_scan_backend(net, backend)
            previous = os.environ.get(scan_cuda.ENV_IMPL)
            if cuda_impl:
                os.environ[scan_cuda.ENV_IMPL] = cuda_impl
            scan_triton.ordered_scan_triton = ordered
            try:
                with torch.no_grad():
                    seconds = _seconds(lambda n=net: n(x), "cuda")
            finally:
                scan_triton.ordered_scan_triton = fused
                if previous is None:
                    os.environ.pop(scan_cuda.ENV_IMPL, None)
                else:
                    os.environ[scan_cuda.ENV_IMPL] = previous
            rows.append({"model": name, "variant": label, "side": side, "ms": seconds * 1e3})
        del net
        torch.cuda.empty_cache()
    return {"rows": rows}


def memory(check: Check) -> dict[str, Any]:
    """Peak GPU memory of a tiled restore against image size (tile 256, bf16)."""
    if check.rehearse:
        return {"skipped": "needs a GPU (torch.cuda memory statistics)"}
    import torch

    from restorecli import models
    from restorecli.inference import ImageRestorer

    rows = []
    for name in MODELS:
        restorer = ImageRestorer(models.build(name), device="cuda", precision="bf16", tile=256, tile_batch=4)
        for side in MEMORY_SIDES[name]:
            if check.time_left() < 20:
                rows.append({"model": name, "side": side, "skipped": "time budget"})
                continue
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            restorer.restore(_image(side))
            torch.cuda.synchronize()
            rows.append({"model": name, "side": side, "tile": 256, "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
                         "seconds": time.perf_counter() - started})  # fmt: skip
        del restorer
        torch.cuda.empty_cache()
    return {"rows": rows}


def training(check: Check) -> dict[str, Any]:
    """A few steps of bf16-autocast training of mair-light-t-x4 (as restorecli/train/loop.py steps)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    from restorecli import models
    from restorecli.models import blocks

    steps, batch, patch = (2, 2, 16) if check.rehearse else (30, 8, 64)
    net = models.build(MODELS[0], device=check.device).train()
    if check.rehearse:
        blocks.set_scan_backend(net, "cpu")
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-4)
    gen = torch.Generator(device="cpu").manual_seed(0)
    losses = []
    started = None
    for step in range(steps + 1):
        lq = torch.rand(batch, 3, patch, patch, generator=gen).to(check.device)
        hq = torch.rand(batch, 3, patch * 4, patch * 4, generator=gen).to(check.device)
        with torch.autocast(check.device, dtype=torch.bfloat16):
            pred = net(lq)
        loss = F.l1_loss(pred.float(), hq)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if step == 0:  # the first step compiles kernels
            _sync(check.device)
            started = time.perf_counter()
    _sync(check.device)
    seconds = time.perf_counter() - started
    finite = all(v == v and abs(v) != float("inf") for v in losses)
    if not finite:
        raise FloatingPointError(f"non-finite loss in {losses}")
    result = {"steps": steps, "batch": batch, "patch": patch, "steps_per_s": steps / seconds, "losses": losses}
    if not check.rehearse:
        result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def markdown(report: dict[str, Any]) -> str:
    """A short human-readable summary of the JSON report."""
    lines = ["# GPU check" + (" (rehearsal on the CPU: numbers mean nothing)" if report["rehearsal"] else ""), ""]
    for name, section in report["sections"].items():
        lines.append(f"## {name}: {section['status']}" + (f" ({section['seconds']} s)" if "seconds" in section else ""))
        lines.append("")
        if "error" in section:
            lines += [f"    {section['error']}", ""]
        if "skipped" in section or "why" in section:
            lines += [f"skipped: {section.get('skipped') or section.get('why')}", ""]
        rows = section.get("rows")
        if rows:
            keys = list(dict.fromkeys(k for row in rows for k in row))
            lines.append("| " + " | ".join(keys) + " |")
            lines.append("|" + " --- |" * len(keys))
            for row in rows:
                lines.append("| " + " | ".join(_cell(row.get(k, "")) for k in keys) + " |")
            lines.append("")
        scalars = {k: v for k, v in section.items() if k not in ("rows", "status", "seconds", "traceback", "error", "skipped", "why")}
        for key, value in scalars.items():
            lines.append(f"* {key}: {_cell(value)}")
        if scalars:
            lines.append("")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value[:8]) + (" ..." if len(value) > 8 else "")
    return str(value)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
