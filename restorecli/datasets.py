"""Registry of the standard restoration benchmarks, their layout, and verified download.

Layout of a set folder (a ``--data-dir`` copy or the cache)::

    <Set>/HR/*                       ground truth (clean / high-resolution)
    <Set>/LR_bicubic/X{s}/*          MATLAB-bicubic LR inputs (SR sets, optional)

An LR file pairs with the HR file of the same *key*: the file stem without the scale suffix, so
both the EDSR naming (``baby.png`` / ``babyx4.png``) and the SelfExSR naming
(``img_001_SRF_3_HR.png`` / ``img_001_SRF_4_LR.png``) work.

Pinned sources: ``datasets_pins.json`` (package data) lists, for every set that has one, the public
GitHub repository and commit its files come from and each file's path there, sha256 and size. It
was generated with :func:`build_pins` from the ``SHA256SUMS`` files of a verified copy; a test
checks that the two still agree. Downloads go through :func:`restorecli.download.download_file`,
so every file is checked against its pin before it is used.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from restorecli.errors import ConfigError, DownloadError, ImageReadError

IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".webp")
_COMPLETE_MARKER = ".complete"


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark set.

    Attributes:
        name: Name used on the command line and as the folder name.
        tasks: Tasks it is a standard test set of: ``sr`` and/or ``denoise``.
        grey: True for grey-scale sets (BSD68, Set12), read with one channel.
        lr_scales: Scales whose LR images the pinned source provides (``LR_bicubic/X{s}``).
        images: Number of ground-truth images.
        description: One line for ``restore datasets list``.
        note: Caveats that change scores (shown in reports).
    """

    name: str
    tasks: tuple[str, ...]
    grey: bool
    lr_scales: tuple[int, ...]
    images: int
    description: str
    note: str = ""


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("Set5", ("sr",), False, (2, 3, 4), 5, "5 classic SR test images"),
        DatasetSpec(
            "Set14",
            ("sr",),
            False,
            (2, 3, 4),
            14,
            "14 classic SR test images",
            note="bridge is grey; it is read as RGB with R = G = B, as the benchmark code does.",
        ),
        DatasetSpec(
            "B100",
            ("sr",),
            False,
            (2, 3, 4),
            100,
            "100 BSDS300 test images (BSD100), SelfExSR release",
            note=(
                "The pinned LR images are SelfExSR's, which differ slightly from plain MATLAB imresize "
                "(up to 10 grey levels on ~1% of values); --lr-from-hr regenerates the EDSR-style LR."
            ),
        ),
        DatasetSpec(
            "Urban100",
            ("sr", "denoise"),
            False,
            (),
            100,
            "100 urban scenes (no pinned source: use --data-dir)",
        ),
        DatasetSpec(
            "Manga109",
            ("sr",),
            False,
            (),
            109,
            "109 manga covers, academic use only (no pinned source: use --data-dir)",
        ),
        DatasetSpec("CBSD68", ("denoise",), False, (), 68, "68 colour BSDS300 test images, 481x321"),
        DatasetSpec(
            "Kodak24",
            ("denoise",),
            False,
            (),
            24,
            "24 Kodak PhotoCD images, full 768x512",
            note="Full-size images; FFDNet-era papers used 500x500 centre crops, which score differently.",
        ),
        DatasetSpec("McMaster", ("denoise",), False, (), 18, "18 McMaster images, 500x500"),
        DatasetSpec("BSD68", ("denoise",), True, (), 68, "68 grey BSDS300 test images"),
        DatasetSpec("Set12", ("denoise",), True, (), 12, "12 grey denoising test images"),
    )
}

# Where each pinned set's files live in its source repository: (local prefix, repository prefix).
# Used only by build_pins(); the download reads the generated JSON.
_SOURCE_LAYOUT: dict[str, tuple[str, str, tuple[tuple[str, str], ...]]] = {
    "Set5": ("JingyunLiang/SwinIR", "6545850fbf8df298df73d81f3e8cba638787c8bd", (("", "testsets/Set5/"),)),
    "Set14": ("zhaohengyuan1/PAN", "4d045d18592c5771cd3990da88f292812774e538", (("", "datasets/Set14/"),)),
    "B100": (
        "jbhuang0604/SelfExSR",
        "8f6dd8c1d20cb7e8792a7177b4f6fd677633f598",
        (
            ("HR/", "data/BSD100/image_SRF_3/"),
            ("LR_bicubic/X2/", "data/BSD100/image_SRF_2/"),
            ("LR_bicubic/X3/", "data/BSD100/image_SRF_3/"),
            ("LR_bicubic/X4/", "data/BSD100/image_SRF_4/"),
        ),
    ),
    "CBSD68": ("cszn/FFDNet", "e787f46df2f374ff3591186706229cb9a0591fea", (("HR/", "testsets/CBSD68/"),)),
    "BSD68": ("cszn/FFDNet", "e787f46df2f374ff3591186706229cb9a0591fea", (("HR/", "testsets/BSD68/"),)),
    "McMaster": ("cszn/FFDNet", "e787f46df2f374ff3591186706229cb9a0591fea", (("HR/", "testsets/McMaster/"),)),
    "Set12": ("cszn/FFDNet", "e787f46df2f374ff3591186706229cb9a0591fea", (("HR/", "testsets/Set12/"),)),
    "Kodak24": ("Zelex/images", "0b8a89db599a384124fb991b85d40cfd63c73d58", (("HR/", "kodak/"),)),
}

_UNPINNED_HELP = {
    "Urban100": (
        "Known public copies (not pinned here): SelfExSR (jbhuang0604/SelfExSR, data/Urban100/image_SRF_4, "
        "img_NNN_SRF_4_HR.png and _LR.png; its image_SRF_2 is a half-resolution variant, not the x2 pair) "
        "and the EDSR benchmark pack."
    ),
    "Manga109": "Manga109 is licensed for academic research only; obtain it from its owners (manga109.org).",
}


@dataclass(frozen=True)
class Sample:
    """One ground-truth image and, for SR, its LR input when the set provides one.

    Attributes:
        name: Image key (file stem without scale suffixes).
        gt: Ground-truth file.
        lr: LR file for the requested scale, or None (generate it from ``gt``).
    """

    name: str
    gt: Path
    lr: Path | None = None


def get_dataset(name: str) -> DatasetSpec:
    """Look a set up by name, case-insensitively.

    Raises:
        ConfigError: Unknown name (the message suggests the closest one).
    """
    for key, spec in DATASETS.items():
        if key.lower() == name.lower():
            return spec
    close = difflib.get_close_matches(name, list(DATASETS), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown data set {name!r}: expected one of {', '.join(DATASETS)}{hint}")


@lru_cache(maxsize=1)
def load_pins() -> dict[str, dict]:
    """The pinned sources, ``{set: {"repo", "commit", "files": [{"path", "source", "sha256", "size"}]}}``."""
    text = resources.files("restorecli").joinpath("datasets_pins.json").read_text(encoding="utf-8")
    return json.loads(text)["sets"]


def cache_root() -> Path:
    """Folder that downloaded sets go to: ``datasets/`` in the tool's cache (``RESTORECLI_CACHE``)."""
    from restorecli.paths import cache_dir

    return cache_dir() / "datasets"


def is_cached(name: str) -> bool:
    """Whether a complete, verified copy of the set is in the cache."""
    return (cache_root() / get_dataset(name).name / _COMPLETE_MARKER).is_file()


def catalogue() -> list[dict[str, Any]]:
    """One row per known set: tasks, images, LR scales, pinned source, download size, cached or not."""
    pins = load_pins()
    rows = []
    for spec in DATASETS.values():
        pin = pins.get(spec.name)
        rows.append(
            {
                "name": spec.name,
                "tasks": list(spec.tasks),
                "grey": spec.grey,
                "images": spec.images,
                "lr_scales": list(spec.lr_scales),
                "source": f"{pin['repo']}@{pin['commit'][:12]}" if pin else None,
                "files": len(pin["files"]) if pin else 0,
                "bytes": sum(f["size"] for f in pin["files"]) if pin else 0,
                "cached": is_cached(spec.name),
                "description": spec.description,
            }
        )
    return rows


def file_url(repo: str, commit: str, source: str) -> str:
    """Raw-content URL of a file of a public GitHub repository at a commit."""
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{source}"


def download_dataset(
    name: str,
    dest_root: Path | None = None,
    *,
    progress: Callable[[int, int, str], None] | None = None,
) -> Path:
    """Download a pinned set into ``dest_root/<Set>`` (default: the cache), verifying every file.

    Files already present with the pinned digest are not fetched again. ``RESTORECLI_MIRROR``
    (see :mod:`restorecli.download`) redirects ``<mirror>/datasets/<Set>/<path>``.

    Args:
        name: Set name.
        dest_root: Parent folder of the set folder.
        progress: Called as ``progress(done, total, path)`` after each file.

    Returns:
        The set folder.

    Raises:
        DownloadError: No pinned source exists, offline mode, or a transfer failed.
        ChecksumError: A file differs from its pin.
    """
    from restorecli.download import apply_mirror, download_file
    from restorecli.io import write_bytes_atomic

    spec = get_dataset(name)
    pins = load_pins().get(spec.name)
    if pins is None:
        raise DownloadError(unpinned_message(spec.name))
    folder = (dest_root or cache_root()) / spec.name
    files = pins["files"]
    for done, entry in enumerate(files, 1):
        url = file_url(pins["repo"], pins["commit"], entry["source"])
        url = apply_mirror(url, f"datasets/{spec.name}/{entry['path']}") or url
        download_file(url, folder / entry["path"], sha256=entry["sha256"], size=entry["size"], progress=False)
        if progress is not None:
            progress(done, len(files), entry["path"])
    # atomic: an empty marker left by a stop in mid-write would pass the set as complete
    write_bytes_atomic(folder / _COMPLETE_MARKER, f"{pins['repo']}@{pins['commit']}\n".encode(), overwrite=True)
    return folder


def unpinned_message(name: str) -> str:
    """Why a set cannot be downloaded, and how to supply it with ``--data-dir``."""
    return (
        f"{name} has no pinned public source in restorecli, so it cannot be downloaded and verified. "
        f"{_UNPINNED_HELP.get(name, '')} Put a copy in DIR/{name}/HR/ (ground truth) and, optionally, "
        f"DIR/{name}/LR_bicubic/X<s>/ (LR inputs), then pass --data-dir DIR."
    ).replace("  ", " ")


def locate_dataset(
    name: str,
    data_dir: Path | None = None,
    *,
    download: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
) -> Path:
    """Folder of a set: from ``data_dir``, else the cache, downloading it when needed.

    Args:
        name: Set name.
        data_dir: Folder holding ``<Set>/HR`` (or the set folder itself).
        download: Fetch into the cache when it is not there.
        progress: Passed to :func:`download_dataset`.

    Raises:
        ImageReadError: ``data_dir`` has no such set.
        DownloadError: Not cached and cannot be downloaded.
    """
    spec = get_dataset(name)
    if data_dir is not None:
        data_dir = Path(data_dir)
        candidates = [data_dir] if data_dir.name.lower() == spec.name.lower() else []
        if data_dir.is_dir():
            candidates += [p for p in sorted(data_dir.iterdir()) if p.name.lower() == spec.name.lower()]
        for folder in candidates:
            if (folder / "HR").is_dir():
                return folder
        raise ImageReadError(
            f"expected the ground truth of {spec.name} in {data_dir / spec.name / 'HR'}, found no such folder"
        )
    folder = cache_root() / spec.name
    if is_cached(spec.name):
        return folder
    if spec.name not in load_pins():
        raise DownloadError(unpinned_message(spec.name))
    if not download:
        raise DownloadError(f"{spec.name} is not in the cache ({folder}); run `restore datasets download {spec.name}`")
    return download_dataset(spec.name, progress=progress)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def image_key(stem: str, scale: int | None = None) -> str:
    """Key that pairs files of one image across folders: the stem without scale/HR/LR suffixes.

    >>> image_key("img_001_SRF_4_LR"), image_key("babyx4", 4), image_key("baby")
    ('img_001', 'baby', 'baby')
    """
    match = re.fullmatch(r"(.+)_SRF_\d+_(?:HR|LR)", stem)
    if match:
        return match.group(1)
    if scale is not None:
        match = re.fullmatch(rf"(.+?)[_-]?[xX]{scale}", stem)
        if match:
            return match.group(1)
    return stem


def list_samples(folder: Path, scale: int | None = None, *, use_lr: bool = True) -> list[Sample]:
    """Ground-truth images of a set folder with their LR inputs for ``scale``.

    Args:
        folder: Set folder (holding ``HR/``).
        scale: SR scale; None or 1 for denoising (no LR).
        use_lr: Pair with ``LR_bicubic/X{scale}`` when it exists.

    Returns:
        Samples sorted by name; ``lr`` is None for all of them when the set has no LR folder.

    Raises:
        ImageReadError: No images, or an LR folder that lacks some image.
    """
    hr_dir = Path(folder) / "HR"
    gts = _image_files(hr_dir) if hr_dir.is_dir() else []
    if not gts:
        raise ImageReadError(f"expected images in {hr_dir}, found none")
    lr_dir = Path(folder) / "LR_bicubic" / f"X{scale}"
    lrs: dict[str, Path] = {}
    if use_lr and scale and scale > 1 and lr_dir.is_dir():
        for p in _image_files(lr_dir):
            lrs[p.stem] = p  # same name as the ground truth
            lrs[image_key(p.stem, scale)] = p
    samples = []
    for gt in gts:
        key = image_key(gt.stem)
        lr = lrs.get(key, lrs.get(gt.stem))
        if lrs and lr is None:
            raise ImageReadError(f"no LR image for {gt.name} in {lr_dir}; expected a file named like {key}x{scale}.png")
        samples.append(Sample(key, gt, lr))
    return sorted(samples, key=lambda s: s.name)


def build_pins(datasets_root: Path) -> dict:
    """Pins for every set with a known source, from the ``SHA256SUMS`` files of a verified copy.

    Regenerate the package data with::

        python -c "import sys; from pathlib import Path; from restorecli.datasets import build_pins, pins_json; \
Path('restorecli/datasets_pins.json').write_text(pins_json(build_pins(Path(sys.argv[1]))))" DATASETS_DIR

    Args:
        datasets_root: Folder with ``<Set>/SHA256SUMS`` and the files they list.

    Returns:
        The JSON document (``{"version": 1, "sets": {...}}``).
    """
    sets = {}
    for name, (repo, commit, layout) in _SOURCE_LAYOUT.items():
        files = []
        for line in (datasets_root / name / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            digest, path = line.split(maxsplit=1)
            path = path.lstrip("*")
            local, remote = next((lp, rp) for lp, rp in layout if path.startswith(lp))
            size = (datasets_root / name / path).stat().st_size
            files.append({"path": path, "source": remote + path[len(local) :], "sha256": digest, "size": size})
        sets[name] = {"repo": repo, "commit": commit, "files": sorted(files, key=lambda f: f["path"])}
    return {"version": 1, "sets": sets}


def pins_json(pins: dict) -> str:
    """Serialise pins with one file per line, so that diffs of the package data stay readable."""
    lines = ['{"version": ' + str(pins["version"]) + ', "sets": {']
    names = list(pins["sets"])
    for i, name in enumerate(names):
        entry = pins["sets"][name]
        lines.append(
            f'{json.dumps(name)}: {{"repo": {json.dumps(entry["repo"])}, "commit": {json.dumps(entry["commit"])}, "files": ['
        )
        rows = [json.dumps(f, sort_keys=True) for f in entry["files"]]
        lines.append(",\n".join(rows))
        lines.append("]}" + ("," if i < len(names) - 1 else ""))
    lines.append("}}")
    return "\n".join(lines) + "\n"
