"""Validation curves of training runs: read ``metrics.jsonl`` and draw them (``restore train plot``).

A run's ``metrics.jsonl`` (``restorecli.train.loop``) holds one record per validation with the
iteration, wall time ``time`` and the process's CPU time ``cpu_s``. The picture is drawn with
OpenCV, already a dependency, so that plotting needs no plotting library.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from restorecli.errors import UsageError

# x axis name -> (record key, scale to the unit shown, axis label)
X_AXES: dict[str, tuple[str, float, str]] = {
    "cpu": ("cpu_s", 1 / 60, "CPU-minutes (all threads)"),
    "wall": ("time", 1 / 60, "wall-clock minutes"),
    "iter": ("iter", 1.0, "iterations"),
}
_COLOURS_BGR = ((180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140), (194, 119, 227), (127, 127, 127))


@dataclass(frozen=True)
class Curve:
    """One run's validation metric against one x axis, in iteration order."""

    label: str
    metric: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    iterations: tuple[int, ...]


def metrics_file(run: Path) -> Path:
    """``run`` itself when it is a file, else ``run/metrics.jsonl``."""
    return run if run.is_file() else run / "metrics.jsonl"


def read_curve(run: Path, *, metric: str | None = None, x_axis: str = "cpu", label: str | None = None) -> Curve:
    """The validation curve of a run folder (or its ``metrics.jsonl``).

    ``metric`` defaults to the first ``val/<set>/psnr`` key of the run. A resumed run appends to
    its file, so the last record of each iteration wins. Points whose value is not finite (the PSNR
    of identical images is inf) are left out of the curve.

    Raises:
        UsageError: No metrics file, no such metric, or records without the x axis (runs
            trained before CPU time was recorded have no ``cpu_s``: use ``wall`` or ``iter``).
    """
    if x_axis not in X_AXES:
        raise UsageError(f"--x: expected one of {', '.join(X_AXES)}, got {x_axis!r}")
    path = metrics_file(run)
    if not path.is_file():
        raise UsageError(f"{run}: expected a training run folder with metrics.jsonl (or the file itself), found none")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: expected JSON lines (metrics.jsonl), found binary data") from None
    records: dict[int, dict] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UsageError(f"{path}: line {number} is not JSON") from None
        if isinstance(record, dict) and any(str(key).startswith("val/") for key in record):
            iteration = record.get("iter", 0)
            if isinstance(iteration, bool) or not isinstance(iteration, int):
                raise UsageError(f"{path}: line {number}: expected an integer 'iter', got {iteration!r}")
            records[iteration] = record
    if not records:
        raise UsageError(f"{path}: expected validation records (val.sets in the config), found none")
    keys = sorted({key for record in records.values() for key in record if key.startswith("val/")})
    if metric is None:
        psnr = [key for key in keys if key.endswith("/psnr")]
        metric = psnr[0] if psnr else keys[0]
    elif metric not in keys:
        raise UsageError(f"{path}: expected one of the metrics {', '.join(keys)}, got {metric!r}")
    key, scale, _ = X_AXES[x_axis]
    points = [(it, r) for it, r in sorted(records.items()) if metric in r]
    missing = [it for it, r in points if key not in r]
    if missing:
        hint = " (trained before CPU time was recorded: use --x wall or --x iter)" if key == "cpu_s" else ""
        raise UsageError(f"{path}: the records of iteration {missing[0]} have no {key!r}{hint}")
    for it, r in points:
        for field in (key, metric):
            if isinstance(r[field], bool) or not isinstance(r[field], (int, float)):
                raise UsageError(f"{path}: the records of iteration {it}: expected a number for {field!r}, got {r[field]!r}")
    # identical images score PSNR inf (restorecli.metrics); a chart can only show finite values
    points = [(it, r) for it, r in points if math.isfinite(r[metric]) and math.isfinite(r[key])]
    if not points:
        raise UsageError(f"{path}: expected finite values of {metric}, found only inf or NaN")
    name = label or (path.parent.name if path.name == "metrics.jsonl" else path.stem)
    return Curve(
        label=name,
        metric=metric,
        x=tuple(float(r[key]) * scale for _, r in points),
        y=tuple(float(r[metric]) for _, r in points),
        iterations=tuple(it for it, _ in points),
    )


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [low, high]."""
    if not high > low:
        high = low + 1.0
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e5 else f"{value:.3g}"


def draw_curves(curves: Sequence[Curve], *, x_label: str, y_label: str, title: str = "", size: tuple[int, int] = (960, 600)) -> np.ndarray:
    """A line chart of the curves as an (H, W, 3) uint8 BGR image (white background, legend)."""
    width, height = size
    image = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 90, 30, 50 if title else 25, 70
    xs = [x for c in curves for x in c.x]
    ys = [y for c in curves for y in c.y]
    x_ticks = nice_ticks(min(0.0, min(xs)), max(xs))
    y_pad = (max(ys) - min(ys)) * 0.05 or 0.5
    y_ticks = nice_ticks(min(ys) - y_pad, max(ys) + y_pad)
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def to_px(x: float, y: float) -> tuple[int, int]:
        px = left + (x - x0) / (x1 - x0) * (width - left - right)
        py = height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)
        return round(px), round(py)

    font, grid, ink = cv2.FONT_HERSHEY_SIMPLEX, (225, 225, 225), (40, 40, 40)
    for x in x_ticks:
        px, _ = to_px(x, y0)
        cv2.line(image, (px, top), (px, height - bottom), grid, 1)
        text = _label(x)
        (tw, _), _ = cv2.getTextSize(text, font, 0.45, 1)
        cv2.putText(image, text, (px - tw // 2, height - bottom + 20), font, 0.45, ink, 1, cv2.LINE_AA)
    for y in y_ticks:
        _, py = to_px(x0, y)
        cv2.line(image, (left, py), (width - right, py), grid, 1)
        text = _label(y)
        (tw, th), _ = cv2.getTextSize(text, font, 0.45, 1)
        cv2.putText(image, text, (left - tw - 8, py + th // 2), font, 0.45, ink, 1, cv2.LINE_AA)
    cv2.rectangle(image, (left, top), (width - right, height - bottom), ink, 1)
    (tw, _), _ = cv2.getTextSize(x_label, font, 0.5, 1)
    cv2.putText(image, x_label, ((left + width - right - tw) // 2, height - 18), font, 0.5, ink, 1, cv2.LINE_AA)
    y_text = np.full((30, 400, 3), 255, np.uint8)
    (tw, _), _ = cv2.getTextSize(y_label, font, 0.5, 1)
    cv2.putText(y_text, y_label, (0, 20), font, 0.5, ink, 1, cv2.LINE_AA)
    y_text = cv2.rotate(y_text[:, : tw + 2], cv2.ROTATE_90_COUNTERCLOCKWISE)
    ty = max(top, (top + height - bottom - y_text.shape[0]) // 2)
    image[ty : ty + y_text.shape[0], 12 : 12 + y_text.shape[1]] = y_text[: height - ty]
    if title:
        (tw, _), _ = cv2.getTextSize(title, font, 0.6, 1)
        cv2.putText(image, title, ((width - tw) // 2, 30), font, 0.6, ink, 1, cv2.LINE_AA)
    for index, curve in enumerate(curves):
        colour = _COLOURS_BGR[index % len(_COLOURS_BGR)]
        points = np.array([to_px(x, y) for x, y in zip(curve.x, curve.y, strict=True)], np.int32)
        cv2.polylines(image, [points], False, colour, 2, cv2.LINE_AA)
        for point in points:
            cv2.circle(image, tuple(int(v) for v in point), 3, colour, -1, cv2.LINE_AA)
    # legend in the lower right corner, where rising curves leave room
    rows = [f"{c.label}  (last {c.y[-1]:.2f})" for c in curves]
    widths = [cv2.getTextSize(r, font, 0.45, 1)[0][0] for r in rows]
    box_w, box_h = max(widths) + 46, 22 * len(rows) + 10
    bx, by = width - right - box_w - 10, height - bottom - box_h - 10
    cv2.rectangle(image, (bx, by), (bx + box_w, by + box_h), (255, 255, 255), -1)
    cv2.rectangle(image, (bx, by), (bx + box_w, by + box_h), (160, 160, 160), 1)
    for index, row in enumerate(rows):
        colour = _COLOURS_BGR[index % len(_COLOURS_BGR)]
        cy = by + 20 + 22 * index
        cv2.line(image, (bx + 8, cy - 4), (bx + 34, cy - 4), colour, 2, cv2.LINE_AA)
        cv2.putText(image, row, (bx + 40, cy), font, 0.45, ink, 1, cv2.LINE_AA)
    return image
