"""The report of ``restore eval``: per-image scores, means, and the files written from them.

:func:`restorecli.evaluate.evaluate` returns an :class:`EvalReport`; this module turns it into
``report.json``, ``report.csv``, ``report.md`` and ``comparison.png`` (the same zoomed detail of
the first images: input, output, ground truth).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from restorecli.errors import ImageWriteError

_CROP = 96  # side of the zoomed crop, in ground-truth pixels
_ZOOM = 2


@dataclass(frozen=True)
class ImageResult:
    """Scores of one image; PSNR is ``inf`` where output and ground truth are identical."""

    name: str
    psnr_y: float
    ssim_y: float
    psnr_rgb: float
    ssim_rgb: float
    seconds: float
    height: int
    width: int
    forwards: int = 0
    """Forward passes of the network for this image (tiles, times 8 under the self-ensemble)."""


@dataclass
class ComparisonRow:
    """Zoomed crops of one image for the comparison picture: (RGB uint8 patch, label) panels."""

    name: str
    panels: list[tuple[np.ndarray, str]] = field(default_factory=list)


@dataclass(frozen=True)
class EvalReport:
    """Everything ``restore eval`` writes: setup, per-image scores and means."""

    meta: dict[str, Any]
    images: list[ImageResult]
    comparison: list[ComparisonRow] = field(default_factory=list, repr=False, compare=False)
    stop_signal: int | None = None
    """The signal that stopped the evaluation early (``meta["stopped_by"]`` names it), or None."""

    @property
    def mean(self) -> dict[str, float]:
        """Means over the images (PSNR averaged in dB, as the papers do)."""
        keys = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "seconds")
        return {k: float(np.mean([getattr(r, k) for r in self.images])) for k in keys}

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: ``meta`` fields, ``mean`` and the per-image list.

        Infinite PSNR (identical images) is written as null, since JSON has no infinity.
        """
        return {
            **self.meta,
            "mean": _finite(self.mean),
            "time_per_image": self.mean["seconds"],
            "images": [_finite(asdict(r)) for r in self.images],
        }


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


def zoomed_row(name: str, images: Sequence[tuple[np.ndarray, str]], gt: np.ndarray) -> ComparisonRow:
    """One row of the comparison picture: the same detailed square of each image, enlarged.

    Args:
        name: The image's name.
        images: (H, W, C) uint8 images of the ground truth's size, each with its label.
        gt: The ground truth, which picks the square (:func:`detail_window`).
    """
    top, left, size = detail_window(gt)

    def cut(img: np.ndarray) -> np.ndarray:
        patch = img[top : top + size, left : left + size]
        if patch.shape[2] == 1:
            patch = np.repeat(patch, 3, axis=2)
        return cv2.resize(patch, None, fx=_ZOOM, fy=_ZOOM, interpolation=cv2.INTER_NEAREST)

    return ComparisonRow(name, [(cut(img), label) for img, label in images])


def detail_window(gt: np.ndarray) -> tuple[int, int, int]:
    """Top-left corner and side of the most detailed square of the ground truth (zoom target)."""
    size = min(_CROP, gt.shape[0], gt.shape[1])
    grey = gt.mean(axis=2).astype(np.float32)
    energy = np.abs(cv2.Sobel(grey, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    # Sum of energy over every size×size window, via a box filter on the full image.
    box = cv2.boxFilter(energy, -1, (size, size), normalize=False, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT)
    valid = box[: gt.shape[0] - size + 1, : gt.shape[1] - size + 1]
    top, left = np.unravel_index(int(np.argmax(valid)), valid.shape)
    return int(top), int(left), size


def comparison_image(crops: Sequence[ComparisonRow]) -> np.ndarray:
    """One picture: a row per image, a column per panel, each labelled (RGB uint8)."""
    label_h, pad = 22, 4
    rows = []
    for item in crops:
        cells = []
        for patch, label in item.panels:
            bar = np.zeros((label_h, patch.shape[1], 3), np.uint8)
            cv2.putText(bar, label, (3, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
            cells.append(np.pad(np.vstack([bar, patch]), ((pad, pad), (pad, pad), (0, 0)), constant_values=255))
        rows.append(np.hstack(cells))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.vstack(rows)


def _fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "inf"
    return f"{value:.{digits}f}"


def _seconds(value: float | None) -> str | None:
    return None if value is None else f"{value:.3f} s"


def report_markdown(report: EvalReport) -> str:
    """Human-readable report."""
    summary = report.summary()
    mean = summary["mean"]
    head = "Y" if summary["headline"] == "y" else "RGB"
    lines = [f"# restore eval: {summary['model']} on {summary['dataset']}", ""]
    setup = [
        ("task", summary["task"]),
        ("scale", summary.get("scale")),
        ("noise sigma", summary.get("sigma")),
        ("synthetic inputs", summary.get("degradation")),
        ("model", summary["model"]),
        ("weights sha256", summary.get("weights_sha256")),
        ("protocol", summary["protocol"] + (" + self-ensemble" if summary.get("ensemble") else "")),
        ("device", summary.get("device")),
        ("scan backend", summary.get("backend")),
        ("tile", summary.get("tile")),
        ("forward passes per image", summary.get("forwards_per_image")),
        ("LR source", summary.get("lr_source")),
        ("crop border", summary["crop_border"]),
        ("headline metric", head),
        ("metrics", summary["metrics_convention"]),
        ("time per image", f"{summary['time_per_image']:.3f} s"),
        ("setup (not in the time per image)", _seconds(summary.get("setup_seconds"))),
        ("date", summary["date"]),
    ]
    lines += ["| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in setup if v is not None]
    lines += [
        "",
        f"**Mean: PSNR {_fmt(mean['psnr_y' if head == 'Y' else 'psnr_rgb'], 2)} dB, "
        f"SSIM {_fmt(mean['ssim_y' if head == 'Y' else 'ssim_rgb'], 4)} ({head})**",
        "",
        "| image | PSNR Y | SSIM Y | PSNR RGB | SSIM RGB | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary["images"] + [{"name": "**mean**", **mean}]:
        lines.append(
            f"| {r['name']} | {_fmt(r['psnr_y'], 2)} | {_fmt(r['ssim_y'], 4)} | {_fmt(r['psnr_rgb'], 2)} | "
            f"{_fmt(r['ssim_rgb'], 4)} | {r['seconds']:.3f} |"
        )
    if summary.get("failed"):
        lines += ["", "Not scored:", ""] + [f"- {item['name']}: {item['error']}" for item in summary["failed"]]
    if summary.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in summary["notes"]]
    return "\n".join(lines) + "\n"


def report_csv(report: EvalReport) -> str:
    """Per-image rows and a final ``mean`` row."""
    buffer = io.StringIO()
    fields = ["name", "psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "seconds", "height", "width", "forwards"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in report.images:
        writer.writerow(asdict(r))
    writer.writerow({"name": "mean", **report.mean})
    return buffer.getvalue()


def write_report(report: EvalReport, out_dir: Path) -> list[Path]:
    """Write report.json, report.csv, report.md and comparison.png into ``out_dir``.

    Returns:
        The files written.

    Raises:
        ImageWriteError: The folder or a file cannot be written.
    """
    from restorecli.io import write_bytes_atomic

    out_dir = Path(out_dir)
    texts = {
        "report.json": json.dumps(report.summary(), indent=2) + "\n",
        "report.csv": report_csv(report),
        "report.md": report_markdown(report),
    }
    paths = []
    # atomic, like every output: a stopped run leaves whole files (from this run or the last)
    for name, text in texts.items():
        write_bytes_atomic(out_dir / name, text.encode("utf-8"), overwrite=True)
        paths.append(out_dir / name)
    if report.comparison:
        picture = cv2.cvtColor(comparison_image(report.comparison), cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(".png", picture)
        if not ok:
            raise ImageWriteError(f"cannot encode the comparison image of {out_dir}")
        write_bytes_atomic(out_dir / "comparison.png", encoded.tobytes(), overwrite=True)
        paths.append(out_dir / "comparison.png")
    return paths
