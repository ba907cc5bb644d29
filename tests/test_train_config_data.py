"""Training config loading/validation and the training data pipeline (no network involved)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from restorecli.errors import ConfigError
from restorecli.train.config import (
    apply_overrides,
    config_from_mapping,
    config_to_mapping,
    load_config,
    parse_override,
    preset_names,
    read_mapping,
)
from restorecli.train.data import (
    ResumableSampler,
    TrainDataset,
    add_haze,
    add_noise,
    augment,
    bicubic_lr,
    load_val_set,
    motion_blur,
    motion_kernel,
    pair_folders,
)

TINY = {
    "name": "tiny",
    "model": {
        "arch": "mair",
        "config": {
            "upscale": 2, "in_chans": 3, "img_range": 1.0, "embed_dim": 8, "depths": [1], "d_state": 1,
            "ssm_ratio": 1.0, "mlp_ratio": 1.0, "upsampler": "pixelshuffledirect", "resi_connection": "1conv",
            "scan_len": 4, "drop_path_rate": 0.0,
        },
    },
    "data": {"hq": ["hq"], "patch": 8, "batch": 2},
    "degradation": {"scale": 2, "steps": ["bicubic"]},
    "schedule": {"iterations": 10},
}


def _error(mapping: dict) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(mapping)
    message = str(info.value)
    assert "\n" not in message  # the CLI prints it as one line
    return message


def test_unknown_keys_name_the_key_and_suggest() -> None:
    assert "optim.lrr" in _error({**TINY, "optim": {"lrr": 1}}) and "'optim.lr'" in _error({**TINY, "optim": {"lrr": 1}})
    assert "'schedule'" in _error({**{k: v for k, v in TINY.items() if k != "schedule"}, "schedul": {"iterations": 1}})
    message = _error({**TINY, "model": {**TINY["model"], "config": {**TINY["model"]["config"], "embed_dimm": 4}}})
    assert "embed_dimm" in message and "'embed_dim'" in message


def test_missing_and_ill_typed_values() -> None:
    assert "schedule.iterations" in _error({**TINY, "schedule": {}})
    assert "data.hq" in _error({**TINY, "data": {"patch": 8}})
    assert "must be an integer" in _error({**TINY, "data": {**TINY["data"], "batch": "many"}})
    assert "optim.loss" in _error({**TINY, "optim": {"loss": "l2"}})
    assert "degradation.scale" in _error({**TINY, "degradation": {"scale": 3, "steps": ["bicubic"]}})
    assert "needs 'bicubic'" in _error({**TINY, "degradation": {"scale": 2, "steps": []}})
    assert "did you mean 'mair-light-t-x4'" in _error({**TINY, "model": {"name": "mair-light-t-x5"}})


def test_overrides_are_yaml_values() -> None:
    assert parse_override("optim.lr=2e-4") == (["optim", "lr"], "2e-4")  # YAML 1.1 string; the loader accepts it
    assert parse_override("data.hq=[a, b]") == (["data", "hq"], ["a", "b"])
    assert parse_override("optim.bf16=false") == (["optim", "bf16"], False)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("optim.lr")
    cfg = config_from_mapping(apply_overrides(TINY, ["optim.lr=2e-4", "data.batch=4", "val.sets=[{name: v, hq: x}]"]))
    assert cfg.optim.lr == 2e-4 and cfg.data.batch == 4 and cfg.val.sets[0].name == "v"
    with pytest.raises(ConfigError, match="not a mapping"):
        apply_overrides(TINY, ["name.x=1"])


def test_config_round_trips_through_plain_mapping() -> None:
    cfg = config_from_mapping(apply_overrides(TINY, ["degradation.noise_sigma=[5, 50]"]))
    assert cfg.degradation.noise_sigma == (5.0, 50.0)
    assert config_from_mapping(config_to_mapping(cfg)) == cfg


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_loads_once_given_data(preset: str) -> None:
    with pytest.raises(ConfigError, match="data.hq"):
        load_config(preset)  # paths are arguments, never in a preset
    mapping = read_mapping(preset)
    overrides = ["data.hq=[hq]"] + (["data.lq=[lq]"] if mapping["data"].get("lq") is not None else [])
    cfg = load_config(preset, overrides)
    assert cfg.schedule.iterations > 0 and cfg.model.config is not None


def test_official_presets_follow_the_spec() -> None:
    x4 = load_config("mair-light-t-x4", ["data.hq=[hq]", "data.lq=[lq]"])
    assert (x4.data.patch, x4.data.batch, x4.schedule.iterations) == (64, 16, 250000)
    assert x4.schedule.milestones == (125000, 200000, 225000, 237500) and x4.optim.betas == (0.9, 0.99)
    dn = load_config("mair-dn-s15", ["data.hq=[hq]"])
    assert dn.optim.loss == "charbonnier" and dn.degradation.noise_sigma == (15.0, 15.0) and dn.data.batch == 1
    realdn = load_config("mair-realdn", ["data.hq=[hq]", "data.lq=[lq]"])
    assert realdn.optim.type == "adamw" and realdn.optim.grad_clip == 0.01 and realdn.schedule.cosine_start == 184000


# --------------------------------------------------------------------------------------------
# Degradations


def _image(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    return rng.uniform(0.2, 0.8, (size, size, 3)).astype(np.float32)


def test_noise_has_the_requested_sigma() -> None:
    rng = np.random.default_rng(0)
    img = _image(rng, 256)
    noisy = add_noise(img, 25.0, rng)
    assert abs(float(np.std(noisy - img)) * 255.0 - 25.0) < 0.25
    assert abs(float(np.mean(noisy - img))) < 1e-3
    assert add_noise(img, 50.0, rng, clip=True).max() <= 1.0


def test_blur_kernels_are_normalised_trajectories() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        kernel = motion_kernel(21, rng.uniform(4, 16), rng)
        assert kernel.shape == (21, 21) and kernel.min() >= 0
        assert abs(float(kernel.sum()) - 1.0) < 1e-5
        assert (kernel > 0).sum() > 3  # a path, not a delta
    img = _image(rng)
    blurred = motion_blur(img, kernel)
    assert blurred.shape == img.shape and abs(float(blurred.mean() - img.mean())) < 0.01  # sum 1 keeps brightness
    assert blurred.std() < img.std()


def test_haze_stays_in_range_and_between_scene_and_airlight() -> None:
    rng = np.random.default_rng(2)
    img = rng.uniform(0.0, 1.0, (48, 64, 3)).astype(np.float32)
    hazy = add_haze(img, rng, (0.3, 0.9), (0.7, 1.0))
    assert hazy.shape == img.shape and hazy.min() >= 0.0 and hazy.max() <= 1.0
    assert hazy.std() < img.std()  # contrast drops
    assert hazy.mean() > img.mean()  # bright airlight brightens a mid-grey scene


def test_augment_keeps_pairs_aligned() -> None:
    lq = np.arange(4 * 4 * 3, dtype=np.float32).reshape(4, 4, 3)
    hq = np.kron(lq, np.ones((2, 2, 1), np.float32))
    for seed in range(8):
        a, b = augment(lq, hq, np.random.default_rng(seed), True, True)
        assert np.array_equal(b[::2, ::2], a)


# --------------------------------------------------------------------------------------------
# Data sets and sampling


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(3)
    hq, lq = tmp_path / "hq", tmp_path / "lq"
    hq.mkdir()
    lq.mkdir()
    for name, (h, w) in {"a": (40, 36), "b": (33, 50), "c": (20, 20)}.items():
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(hq / f"{name}.png"), img)
        cv2.imwrite(str(lq / f"{name}x2.png"), bicubic_lr(img, 2))
    return hq, lq


def _cfg(hq: Path, *extra: str):
    return config_from_mapping(apply_overrides(TINY, [f"data.hq=[{hq}]", *extra]))


def test_pairs_match_by_name_with_scale_suffix(folders: tuple[Path, Path]) -> None:
    hq, lq = folders
    assert [(a.name, b.name) for a, b in pair_folders(hq, lq, 2)] == [("a.png", "ax2.png"), ("b.png", "bx2.png"), ("c.png", "cx2.png")]
    (lq / "cx2.png").unlink()
    with pytest.raises(ConfigError, match="c.png"):
        pair_folders(hq, lq, 2)


@pytest.mark.parametrize("mode", ["bicubic", "paired", "noise+blur+haze"])
def test_samples_have_patch_shapes_and_are_deterministic(folders: tuple[Path, Path], mode: str) -> None:
    hq, lq = folders
    extra = {"bicubic": [], "paired": [f"data.lq=[{lq}]"], "noise+blur+haze": ["degradation.steps=[blur, bicubic, noise, haze]"]}[mode]
    cfg = _cfg(hq, "data.patch=12", *extra)  # c (20x20, LR 10x10) is smaller than the patch: padded
    data = TrainDataset(cfg.data, cfg.degradation, seed=5)
    for index in range(3):
        lq_patch, hq_patch = data[(0, index)]
        assert lq_patch.shape == (3, 12, 12) and hq_patch.shape == (3, 24, 24)
        again = TrainDataset(cfg.data, cfg.degradation, seed=5)[(0, index)]
        assert np.array_equal(again[0], lq_patch) and np.array_equal(again[1], hq_patch)
    assert not np.array_equal(data[(0, 0)][1], data[(1, 0)][1])  # a new epoch draws new crops


def test_bicubic_mode_crops_the_benchmark_lr(folders: tuple[Path, Path]) -> None:
    hq, lq = folders
    cfg = _cfg(hq, "data.patch=8", "data.flip=false", "data.rot90=false")
    lq_patch, hq_patch = TrainDataset(cfg.data, cfg.degradation, seed=0).sample(0, 0)
    full_lr = cv2.imread(str(lq / "ax2.png"))[..., ::-1].astype(np.float32) / 255.0
    # The patch is a crop of the whole-image MATLAB-bicubic LR at the HQ crop's position / 2.
    hits = [
        (y, x)
        for y in range(full_lr.shape[0] - 7)
        for x in range(full_lr.shape[1] - 7)
        if np.array_equal(full_lr[y : y + 8, x : x + 8], lq_patch)
    ]
    assert hits
    assert hq_patch.shape == (16, 16, 3)


def test_sampler_shards_and_resumes() -> None:
    one = ResumableSampler(10, seed=4)
    first = [k for _, k in zip(range(25), one)]
    assert sorted(k for _, k in first[:10]) == list(range(10)) and first[10:] != first[:10]
    resumed = [k for _, k in zip(range(12), ResumableSampler(10, seed=4, start=13))]
    assert resumed == first[13:25]
    ranks = [[k for _, k in zip(range(5), ResumableSampler(10, seed=4, rank=r, world=2))] for r in range(2)]
    assert sorted(i for _, i in ranks[0] + ranks[1]) == list(range(10))


def test_val_set_from_lq_folder_or_degradation(folders: tuple[Path, Path]) -> None:
    hq, lq = folders
    cfg = _cfg(hq)
    from restorecli.train.config import ValSet

    paired = load_val_set(ValSet("v", str(hq), str(lq)), cfg.degradation)
    made = load_val_set(ValSet("v", str(hq)), cfg.degradation)
    assert [i.name for i in paired] == ["a", "b", "c"]
    for p, m in zip(paired, made):
        assert np.array_equal(p.lq, m.lq) and np.array_equal(p.hq, m.hq)
        assert p.hq.shape[:2] == (2 * p.lq.shape[0], 2 * p.lq.shape[1])


def test_grey_patches_carry_the_same_noise_in_every_channel(folders: tuple[Path, Path]) -> None:
    hq, _ = folders
    cfg = _cfg(hq, "degradation.scale=1", "degradation.steps=[noise, blur]", "data.grey=0.5", "model.config.upscale=1", "model.config.upsampler=''")
    data = TrainDataset(cfg.data, cfg.degradation, seed=1)
    kinds = set()
    for epoch in range(8):
        lq_patch, hq_patch = data[(epoch, 0)]
        grey = bool(np.array_equal(hq_patch[0], hq_patch[1]) and np.array_equal(hq_patch[1], hq_patch[2]))
        kinds.add(grey)
        assert lq_patch.shape == hq_patch.shape == (3, 8, 8)
        if grey:  # the network must learn R = G = B inputs with the same noise in each channel
            assert np.array_equal(lq_patch[0], lq_patch[1]) and np.array_equal(lq_patch[1], lq_patch[2])
            assert not np.allclose(lq_patch, hq_patch)
        else:
            assert not np.array_equal(lq_patch[0], lq_patch[1])
    assert kinds == {True, False}


def test_grey_is_a_probability_and_needs_channel_blind_steps() -> None:
    assert "data.grey must be in [0, 1]" in _error({**TINY, "data": {**TINY["data"], "grey": 1.5}})
    hazy = {**TINY, "data": {**TINY["data"], "grey": 0.2}, "degradation": {"scale": 2, "steps": ["bicubic", "haze"]}}
    assert "haze need colour" in _error(hazy)


def test_motion_blur_keeps_one_channel_images_three_dimensional() -> None:
    img = np.random.default_rng(0).random((16, 16, 1), dtype=np.float32)
    assert motion_blur(img, motion_kernel(9, 5.0, np.random.default_rng(1))).shape == (16, 16, 1)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optim.lr=-1", "optim.lr must be a positive number, got -1.0"),
        ("optim.lr=.nan", "optim.lr must be a positive number, got nan"),
        ("optim.betas=[1.5, 0.9]", "optim.betas must be two numbers in [0, 1)"),
        ("optim.weight_decay=-1", "optim.weight_decay must be >= 0"),
        ("optim.grad_clip=-1", "optim.grad_clip must be >= 0"),
        ("optim.charbonnier_eps=-1", "optim.charbonnier_eps must be positive"),
        ("schedule.warmup=-3", "schedule.warmup must be >= 0"),
        ("schedule.gamma=0", "schedule.gamma must be positive"),
        ("schedule.milestones=[-5, 1]", "schedule.milestones must be iterations >= 0"),
        ("seed=-1", "seed must be >= 0"),
        ("threads=-2", "threads must be >= 0"),
        ("val.crop_border=-5", "val.crop_border must be >= 0, or -1"),
        ("degradation.noise_sigma=[50, 5]", "degradation.noise_sigma must be [low, high] with low <= high"),
        ("degradation.haze_transmission=[0, 2]", "degradation.haze_transmission must be [low, high]"),
        ("degradation.blur_size=-1", "degradation.blur_size must be odd and positive"),
        ("data.hq=''", "data.hq expects folder paths, got an empty one"),
        ("val.sets=[{name: v, hq: a}, {name: v, hq: b}]", "val.sets expects one name per set, got 'v' more than once"),
    ],
)
def test_values_out_of_range_are_one_line_errors(override: str, needle: str) -> None:
    """Each would otherwise reach torch or NumPy (an uncaught ValueError), or train silently wrong."""
    with pytest.raises(ConfigError) as info:
        config_from_mapping(apply_overrides(TINY, [override]))
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_a_config_that_is_a_folder_or_binary_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder, expected a YAML config file"):
        read_mapping(tmp_path)
    binary = tmp_path / "weights.yml"
    binary.write_bytes(b"\xff\xfe\x00\x80 not text")
    with pytest.raises(ConfigError, match="expected UTF-8 text, found binary data"):
        read_mapping(binary)


def test_a_file_given_for_a_folder_is_named(tmp_path: Path) -> None:
    from restorecli.train.data import list_images

    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ConfigError, match="is a file, expected a folder of images"):
        list_images(image)
    with pytest.raises(ConfigError, match="does not exist"):
        list_images(tmp_path / "missing")


def test_unusable_training_images_are_left_out_with_a_warning(
    folders: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """One bad file among many does not end a run: it is named in a warning and left out of the data."""
    hq, _ = folders
    (hq / "empty.png").write_bytes(b"")
    (hq / "notes.png").write_text("not an image", encoding="utf-8")
    cv2.imwrite(str(hq / "dot.png"), np.zeros((1, 1, 3), np.uint8))  # under the scale: no LR pixel
    png = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))[1].tobytes()
    (hq / "cut.png").write_bytes(png[:100])
    cfg = _cfg(hq)
    with caplog.at_level("WARNING", logger="restorecli.train.data"):
        data = TrainDataset(cfg.data, cfg.degradation, seed=0)
    assert [item.hq.name for item in data.items] == ["a.png", "b.png", "c.png"]
    warned = caplog.text
    for name in ("empty.png", "notes.png", "dot.png", "cut.png"):
        assert name in warned
    assert "training on 3 of 7 images (4 left out" in warned
    assert data[(0, 2)][1].shape == (3, 16, 16)  # indices follow the usable images


def test_no_usable_training_image_is_one_error(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    (folder / "b.png").write_text("text", encoding="utf-8")
    cfg = _cfg(folder)
    with pytest.raises(ConfigError) as info:
        TrainDataset(cfg.data, cfg.degradation, seed=0)
    message = str(info.value)
    assert message.startswith("none of the 2 training images can be used; the first:") and "a.png" in message
    assert "\n" not in message


def test_read_from_disk_a_bad_file_is_an_image_error(folders: tuple[Path, Path]) -> None:
    from restorecli.errors import ImageReadError

    hq, _ = folders
    (hq / "d.png").write_bytes(b"")
    cfg = _cfg(hq, "data.in_memory=false")
    data = TrainDataset(cfg.data, cfg.degradation, seed=0)  # nothing decoded yet
    assert len(data) == 4
    with pytest.raises(ImageReadError, match="d.png: file is empty"):
        data[(0, 3)]


def test_pairs_whose_sizes_do_not_fit_the_scale_are_named(folders: tuple[Path, Path], tmp_path: Path) -> None:
    """An LQ folder of another scale (here x4 LR for an x2 network) is refused, not cropped silently."""
    from restorecli.errors import ImageReadError
    from restorecli.train.config import ValSet

    hq, _ = folders
    x4 = tmp_path / "x4"
    x4.mkdir()
    for path in sorted(hq.iterdir()):
        cv2.imwrite(str(x4 / path.name), bicubic_lr(cv2.imread(str(path)), 4))
    cfg = _cfg(hq, f"data.lq=[{x4}]")
    with pytest.raises(ConfigError, match=r"a.png: is 36x40 px; expected x2 of its LQ a.png \(9x10\): 18x20 \(up to 19x21\)"):
        TrainDataset(cfg.data, cfg.degradation, seed=0)
    with pytest.raises(ImageReadError, match=r"a.png: is 36x40 px; expected x2 of its LQ a.png \(9x10\)"):
        load_val_set(ValSet("v", str(hq), str(x4)), cfg.degradation)
    small = tmp_path / "small"
    small.mkdir()
    cv2.imwrite(str(small / "a.png"), np.zeros((1, 9, 3), np.uint8))
    with pytest.raises(ImageReadError, match="a.png: is 9x1 px; expected at least 2x2 for x2"):
        load_val_set(ValSet("v", str(small)), cfg.degradation)


def test_paired_hq_is_cropped_to_the_scale_of_its_lq(folders: tuple[Path, Path]) -> None:
    """b is 50x33: its x2 LR is 25x16, and its HQ patches come from the top-left 50x32 (the benchmark crop)."""
    hq, lq = folders
    cfg = _cfg(hq, f"data.lq=[{lq}]", "data.patch=16")
    data = TrainDataset(cfg.data, cfg.degradation, seed=0)
    assert data._cache is not None and data._cache[1][0].shape == (32, 50, 3)
