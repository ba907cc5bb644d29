"""Held-out synthetic test inputs for ``restore eval --task deblur|dehaze|realnoise``.

No standard benchmark pairs exist that fit the bundled models (trained on synthetic blur, haze
and camera noise), so the degraded inputs are made from the clean images of a test set (Kodak24,
McMaster, CBSD68, ...; never the training folders) with the training degradations of
``restorecli.degradations`` at fixed parameter ranges. Each image has its own generator, seeded
by the generator version, the task and a CRC-32 of the image's name: the same bytes on every run,
machine and ``--limit``, and independent of the order of the set. The degraded image is
quantised to uint8 as a photo would be. docs/degradations.md lists the parameters.

Changing a range or the seeding changes every score: bump :data:`GENERATOR` when you do.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from restorecli.degradations import degrade
from restorecli.io import quantize_to_uint8
from restorecli.train.config import DegradationSection

GENERATOR = "restorecli-heldout-v1"
_SEED = 20251207
"""First word of every image's seed; part of :data:`GENERATOR` (change both together)."""


@dataclass(frozen=True)
class SyntheticTask:
    """One held-out degradation.

    Attributes:
        task: The ``restore eval --task`` name.
        degradation: The steps and their fixed parameter ranges.
        stream: Second word of the seed, so the tasks draw apart.
        input_label: What the comparison picture calls the degraded input.
        description: One line for reports.
    """

    task: str
    degradation: DegradationSection
    stream: int
    input_label: str
    description: str


SYNTHETIC_TASKS: dict[str, SyntheticTask] = {
    spec.task: spec
    for spec in (
        SyntheticTask(
            task="deblur",
            degradation=DegradationSection(
                steps=("blur", "noise"), blur_size=21, blur_length=(4.0, 16.0), noise_sigma=(0.0, 3.0), noise_clip=True
            ),
            stream=1,
            input_label="blurred",
            description="camera-shake blur (21x21 random-walk kernel, 4-16 px), then Gaussian noise sigma 0-3, clipped",
        ),
        SyntheticTask(
            task="dehaze",
            degradation=DegradationSection(
                steps=("haze_depth", "noise"),
                haze_beta=(0.3, 1.2),
                haze_airlight=(0.7, 1.0),
                haze_tint=0.05,
                noise_sigma=(0.0, 3.0),
                noise_clip=True,
            ),
            stream=2,
            input_label="hazy",
            description="haze over a ground-plane depth layout (beta 0.3-1.2, airlight 0.7-1 +-0.05 tint), "
            "then Gaussian noise sigma 0-3, clipped",
        ),
        SyntheticTask(
            task="realnoise",
            degradation=DegradationSection(
                steps=("camera_noise",),
                camera_shot=(1e-4, 1e-2),
                camera_read=(5e-4, 1e-2),
                camera_jpeg_prob=0.5,
                camera_jpeg_quality=(75, 95),
            ),
            stream=3,
            input_label="camera noise",
            description="camera noise: Poisson-Gaussian on an RGGB mosaic (shot 1e-4-1e-2, read 5e-4-1e-2, "
            "log-uniform), bilinear demosaic, sRGB, JPEG q75-95 on half the images",
        ),
    )
}


def image_rng(task: str, name: str) -> np.random.Generator:
    """The generator of one image of one task: seeded by the version, the task and the name."""
    spec = SYNTHETIC_TASKS[task]
    return np.random.default_rng(np.random.SeedSequence([_SEED, spec.stream, zlib.crc32(name.encode("utf-8"))]))


def synthesise(task: str, clean: np.ndarray, name: str) -> np.ndarray:
    """The held-out degraded input of one clean image.

    Args:
        task: ``deblur``, ``dehaze`` or ``realnoise``.
        clean: (H, W, 3) uint8 RGB ground truth.
        name: The image's name (its key in the set), which seeds the draw.

    Returns:
        (H, W, 3) uint8 RGB degraded image.
    """
    spec = SYNTHETIC_TASKS[task]
    cfg = spec.degradation
    degraded = degrade(clean.astype(np.float32) / np.float32(255.0), cfg.steps, cfg, image_rng(task, name))
    return quantize_to_uint8(degraded)
