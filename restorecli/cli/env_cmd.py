"""`restore env`: versions, devices, scan backends and cache folders, for bug reports.

torch is imported inside the command (it takes seconds to import). Reporting the CPU scan
kernel may build it on first use (a few seconds, once per machine).
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import typer

from restorecli.cli.options import JsonOpt
from restorecli.console import Output

# Variables that change what the tool does; shown when set.
_ENV_VARS = (
    "RESTORECLI_SCAN_BACKEND",
    "RESTORECLI_CPU_SCAN",
    "RESTORECLI_CUDA_SCAN",
    "RESTORECLI_EXTENSIONS_DIR",
    "RESTORECLI_CACHE",
    "RESTORECLI_OFFLINE",
    "CXX",
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "CUDA_VISIBLE_DEVICES",
    "TRITON_INTERPRET",
)


def collect() -> dict[str, Any]:
    """Gather the environment report (imports torch; may build the CPU scan kernel)."""
    import torch

    from restorecli._version import __version__
    from restorecli.paths import cache_dir
    from restorecli.ops import available_backends, cpu_cache, scan_cpu, scan_cuda

    devices = [
        {
            "index": i,
            "name": torch.cuda.get_device_name(i),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
            "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
        }
        for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)
    ]
    backends = {name: {"usable": why is None, "reason": why} for name, why in available_backends().items()}
    # what a network's scans would run here, named as every report names it
    runs_on = {device: _scan_label(device) for device in ("cpu", "cuda") if backends[device]["usable"]}
    cpu = scan_cpu.cpu_kernel_status()
    cuda = scan_cuda.cuda_kernel_status() if backends["cuda"]["usable"] else None
    return {
        "restorecli": __version__,
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": {
            "system": platform.platform(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            # sizes the runs of streamed inference (restorecli/models/blocks.py)
            "last_level_cache_per_cpu": cpu_cache.last_level_share(),
        },
        "torch": {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
            "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "cuda_devices": devices,
        "scan": {
            "backends": backends,
            "cpu_kernel": {"implementation": cpu.implementation, "reason": cpu.reason, "library": cpu.library},
            "cuda_kernel": None if cuda is None else {"implementation": cuda.implementation, "reason": cuda.reason},
            "runs": runs_on,
        },
        "cache": {"root": str(cache_dir()), "extensions": str(scan_cpu.extensions_dir())},
        "environment": {name: os.environ[name] for name in _ENV_VARS if name in os.environ},
    }


def _scan_label(device: str) -> str:
    """The scan label of ``device`` (``inference.scan_label``), or why it cannot run."""
    from restorecli.errors import BackendUnavailableError
    from restorecli.inference import scan_label

    try:
        return scan_label(None, device)
    except BackendUnavailableError as error:
        return f"error: {error}"


def _cache_text(report: dict[str, Any]) -> str:
    share = report["platform"]["last_level_cache_per_cpu"]
    return "last-level cache unknown" if share is None else f"last-level cache {share / 2**20:g} MiB per CPU"


def _text(report: dict[str, Any]) -> str:
    torch_info, scan = report["torch"], report["scan"]
    cpu_kernel = scan["cpu_kernel"]
    cpu_path = "compiled kernel" if cpu_kernel["implementation"] == "compiled" else "torch fallback"
    lines = [
        f"restorecli      {report['restorecli']}",
        f"python          {report['python']['version']} ({report['python']['executable']})",
        f"platform        {report['platform']['system']}, {report['platform']['cpus']} CPUs, {_cache_text(report)}",
        f"torch           {torch_info['version']} (CUDA {torch_info['cuda'] or 'none'}, "
        f"{torch_info['threads']} threads, CPU capability {torch_info['cpu_capability']})",
    ]
    if report["cuda_devices"]:
        for dev in report["cuda_devices"]:
            lines.append(f"cuda:{dev['index']}          {dev['name']} (sm {dev['capability']}, {dev['memory_gib']} GiB)")
    else:
        lines.append("cuda devices    none")
    lines.append("scan backends")
    for name, info in scan["backends"].items():
        lines.append(f"  {name:<6} {'usable' if info['usable'] else 'not usable: ' + info['reason']}")
    lines.append(f"cpu scan        {cpu_path}: {cpu_kernel['reason']}")
    if cpu_kernel["library"]:
        lines.append(f"                {cpu_kernel['library']}")
    if scan["cuda_kernel"]:
        lines.append(f"cuda scan       {scan['cuda_kernel']['implementation']}: {scan['cuda_kernel']['reason']}")
    for device, label in scan["runs"].items():
        lines.append(f"scans on {device:<6} {label}")
    lines.append(f"cache           {report['cache']['root']}")
    lines.append(f"extensions      {report['cache']['extensions']}")
    for name, value in report["environment"].items():
        lines.append(f"env             {name}={value}")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add the ``env`` command to the app."""

    @app.command("env")
    def env(json_output: JsonOpt = False) -> None:
        """Show versions, devices, scan backends (usable or why not) and cache folders."""
        output = Output(json_output=json_output)
        report = collect()
        if json_output:
            output.data(report)
        else:
            output.line(_text(report))
