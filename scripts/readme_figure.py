"""Rebuild the README's before/after figure (docs/images/parrots_before_after.png).

Panels (the same 192x192 detail of each, enlarged 2x): MATLAB-bicubic x4 of examples/parrots.png,
`restore sr --scale 4 examples/parrots.png` with the bundled default model, and the original
384x384 crop of Kodak image 23 that examples/parrots.png was made from (area-averaged x4; checked
here).

    python scripts/readme_figure.py --kodim23 PATH/TO/kodim23.png
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CROP_TOP, CROP_LEFT, CROP_SIDE = 40, 200, 384  # where examples/parrots.png comes from


DETAIL_TOP, DETAIL_LEFT, DETAIL_SIDE = 56, 184, 192  # the beak, in output pixels; shown 2x (nearest)


def panel(image: np.ndarray, text: str) -> np.ndarray:
    """The detail window of a 384x384 image, enlarged 2x without smoothing, with a caption box."""
    detail = image[DETAIL_TOP : DETAIL_TOP + DETAIL_SIDE, DETAIL_LEFT : DETAIL_LEFT + DETAIL_SIDE]
    out = cv2.resize(detail, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    (width, height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.7, 2)
    cv2.rectangle(out, (0, 0), (width + 16, height + 16), (0, 0, 0), thickness=-1)
    cv2.putText(out, text, (8, height + 8), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kodim23", type=Path, required=True, help="Kodak image 23 (768x512 PNG)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "parrots_before_after.png")
    args = parser.parse_args()

    from restorecli.imresize import imresize

    example = ROOT / "examples" / "parrots.png"
    original = cv2.imread(str(args.kodim23), cv2.IMREAD_COLOR)
    if original is None:
        sys.exit(f"cannot read {args.kodim23}")
    crop = original[CROP_TOP : CROP_TOP + CROP_SIDE, CROP_LEFT : CROP_LEFT + CROP_SIDE]
    small = cv2.resize(crop, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
    if not np.array_equal(small, cv2.imread(str(example), cv2.IMREAD_COLOR)):
        sys.exit(f"{args.kodim23} is not the image examples/parrots.png was cut from")

    bicubic = imresize(small.astype(np.float64) / 255.0, 4)
    bicubic = np.clip(np.rint(bicubic * 255.0), 0, 255).astype(np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        command = ["restore", "sr", "--scale", "4", str(example), "-o", folder, "--quiet"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        restored = cv2.imread(str(Path(folder) / "parrots_x4.png"), cv2.IMREAD_COLOR)
    panels = [panel(bicubic, "bicubic x4"), panel(restored, "restore sr x4"), panel(crop, "original")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), np.concatenate(panels, axis=1)):
        sys.exit(f"cannot write {args.out}")
    print(args.out)


if __name__ == "__main__":
    main()
