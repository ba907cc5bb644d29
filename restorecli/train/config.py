"""Training configuration: YAML (safe_load) -> frozen dataclasses, with ``--set key=value`` overrides.

A config file has the sections ``model``, ``data``, ``degradation``, ``optim``, ``schedule``,
``val`` and ``output`` plus a few top-level keys (``name``, ``seed``, ``device``, ``threads``).
Unknown keys and missing required keys raise :class:`ConfigError` naming the dotted key and
suggesting the closest valid one. No raw mapping survives the loader: the network part is turned
into the architecture's own config dataclass (``MaIRConfig``/``MaIRUNetConfig``).

Presets shipped with the package (``restorecli/presets/*.yml``) are found by name, so
``--config mair-light-t-x4`` and ``--config my.yml`` both work; data paths are never part of a
preset and are passed with ``--set data.hq=PATH``.

The module is longer than most on purpose (about 550 lines): one frozen dataclass per section with
its checks, and the one loader that turns YAML and ``--set`` overrides into them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union

import yaml

from restorecli.errors import ConfigError

LOSSES = ("l1", "charbonnier")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("multistep", "cosine")
DEGRADATIONS = ("bicubic", "noise", "blur", "haze", "camera_noise", "haze_depth")


@dataclass(frozen=True)
class ModelSection:
    """The network: an official model name, optionally with config overrides, or arch + full config.

    ``config`` holds the architecture's frozen config after loading (never a raw mapping).
    """

    name: str = ""
    arch: str = ""
    config: Any = None
    pretrained: str = ""
    strict: bool = True


@dataclass(frozen=True)
class ProgressiveSection:
    """Progressive patch sizes (the official real-denoising/deblurring recipes); empty lists = off.

    Stage *k* lasts ``iterations[k]`` iterations with LQ patch side ``patch[k]`` and ``batch[k]``
    samples per process; iterations past the last span stay in the last stage.
    """

    iterations: tuple[int, ...] = ()
    patch: tuple[int, ...] = ()
    batch: tuple[int, ...] = ()


@dataclass(frozen=True)
class MixupSection:
    """Batch mixup (official RealDN): with probability ``prob`` per batch (0 = off), mix LQ and HQ.

    λ ~ Beta(``alpha``, ``alpha``) and one permutation of the batch are drawn per mixed batch, and
    both LQ and HQ become ``λ·x + (1 − λ)·x[perm]``.
    """

    prob: float = 0.0
    alpha: float = 1.2


# Degradation steps that treat each channel alike, so they also run on a one-channel (grey) patch.
CHANNEL_BLIND_STEPS = ("bicubic", "noise", "blur")


@dataclass(frozen=True)
class DataSection:
    """Training images. ``hq`` folders (required); ``lq`` folders for paired data (same order).

    ``patch`` is the LQ patch side, ``batch`` the batch per process (with ``progressive`` stages:
    the largest stage's, as the official ``gt_size``/``batch_size_per_gpu``), ``in_memory`` None =
    auto (decode once and keep when the files total under 1 GiB). ``grey`` is the chance that an
    HQ-only patch becomes grey (BT.601 luma) before it is degraded as one channel and repeated to
    three: the CLI feeds grey images to colour networks as R = G = B, whose noise is then the same
    in every channel, which a network trained on colour noise alone hardly removes.
    """

    hq: tuple[str, ...]
    lq: tuple[str, ...] = ()
    patch: int = 64
    batch: int = 16
    workers: int = 0
    flip: bool = True
    rot90: bool = True
    in_memory: bool | None = None
    grey: float = 0.0
    progressive: ProgressiveSection = field(default_factory=ProgressiveSection)
    mixup: MixupSection = field(default_factory=MixupSection)


@dataclass(frozen=True)
class DegradationSection:
    """On-the-fly degradation of HQ-only data, ``steps`` applied in order (ignored for paired data).

    Noise σ and airlight are in [0, 255] / [0, 1] units; a range draws uniformly per sample, equal
    ends give a fixed value (``camera_shot``/``camera_read`` draw log-uniformly). The steps are
    ``restorecli.degradations``; docs/degradations.md describes each.

    ``camera_shot`` is the shot-noise variance per unit of linear intensity, ``camera_read`` the
    read-noise standard deviation (linear units), ``camera_jpeg_prob`` the chance of JPEG
    compression at a quality in ``camera_jpeg_quality``; ``haze_beta`` is the scattering
    coefficient over the relative depth of ``haze_depth`` (whose airlight is ``haze_airlight``
    plus a per-channel tint up to ``haze_tint``).
    """

    scale: int = 1
    steps: tuple[str, ...] = ()
    noise_sigma: tuple[float, float] = (25.0, 25.0)
    noise_clip: bool = False
    blur_size: int = 21
    blur_length: tuple[float, float] = (4.0, 16.0)
    haze_transmission: tuple[float, float] = (0.3, 0.95)
    haze_airlight: tuple[float, float] = (0.7, 1.0)
    haze_beta: tuple[float, float] = (0.3, 1.2)
    haze_tint: float = 0.05
    camera_shot: tuple[float, float] = (1e-4, 1e-2)
    camera_read: tuple[float, float] = (5e-4, 1e-2)
    camera_jpeg_prob: float = 0.0
    camera_jpeg_quality: tuple[int, int] = (75, 95)


@dataclass(frozen=True)
class OptimSection:
    """Loss, optimiser, clipping, EMA and precision."""

    lr: float = 2e-4
    type: str = "adam"
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    loss: str = "l1"
    charbonnier_eps: float = 1e-12
    grad_clip: float = 0.0
    ema: float = 0.0
    bf16: bool = True


@dataclass(frozen=True)
class ScheduleSection:
    """Learning-rate schedule: linear warm-up, then multi-step decay or cosine decay.

    Cosine keeps the base rate for ``cosine_start`` iterations after warm-up, then anneals to
    ``eta_min`` at ``iterations`` (the shape of the official cyclic schedule's two periods).
    """

    iterations: int
    type: str = "multistep"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.5
    warmup: int = 0
    eta_min: float = 1e-7
    cosine_start: int = 0


@dataclass(frozen=True)
class ValSet:
    """A validation set: HQ folder and optional LQ folder (else the training degradation, seeded)."""

    name: str
    hq: str
    lq: str = ""


@dataclass(frozen=True)
class ValSection:
    """Validation every ``every`` iterations (0 = never); ``crop_border`` -1 = the scale."""

    sets: tuple[ValSet, ...] = ()
    every: int = 0
    crop_border: int = -1
    y_channel: bool = True
    ssim: bool = True


@dataclass(frozen=True)
class OutputSection:
    """Where checkpoints and logs go (default ``runs/<name>``) and how often."""

    dir: str = ""
    save_every: int = 0
    log_every: int = 50
    tensorboard: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run."""

    model: ModelSection
    data: DataSection
    schedule: ScheduleSection
    name: str = ""
    seed: int = 10
    device: str = "auto"
    threads: int = 0
    degradation: DegradationSection = field(default_factory=DegradationSection)
    optim: OptimSection = field(default_factory=OptimSection)
    val: ValSection = field(default_factory=ValSection)
    output: OutputSection = field(default_factory=OutputSection)

    @property
    def run_name(self) -> str:
        """The run's name: ``name``, else the model name, else the architecture."""
        return self.name or self.model.name or self.model.arch

    @property
    def output_dir(self) -> Path:
        """The output folder."""
        return Path(self.output.dir or f"runs/{self.run_name}")


def _suggest(word: str, options: Sequence[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f"; did you mean {prefix + close[0]!r}?" if close else ""


def _is_optional(hint: Any) -> tuple[bool, Any]:
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) < len(typing.get_args(hint)):
            return True, args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007
    return False, hint


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Check/convert one YAML value against a type hint (scalars, tuples, optionals, dataclasses)."""
    optional, inner = _is_optional(hint)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} must not be null")
    hint = inner
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {type(value).__name__}")
        return _from_mapping(hint, value, key)
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            value = [value]
            # A scalar given for a fixed-length pair means "both ends equal" (a fixed value).
            if len(args) == 2 and args[1] is not Ellipsis:
                value = value * 2
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key} needs {len(args)} values, got {len(value)}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads "2e-4" as a string; accept it as a number.
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    raise AssertionError(f"unsupported config type {hint!r} for {key}")


def _from_mapping(cls: type, mapping: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    valid = {f.name: f for f in dataclasses.fields(cls)}
    dot = f"{prefix}." if prefix else ""
    for key in mapping:
        if key not in valid:
            raise ConfigError(f"unknown config key {dot}{key!s}{_suggest(str(key), sorted(valid), dot)}")
    missing = [
        f"{dot}{f.name}"
        for f in valid.values()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in mapping
    ]
    if missing:
        raise ConfigError(f"missing config key(s): {', '.join(missing)}")
    values = {key: _convert(value, hints[key], f"{dot}{key}") for key, value in mapping.items()}
    return cls(**values)


def _resolve_model(raw: Mapping[str, Any]) -> ModelSection:
    """Merge the named model's config with overrides, validate against the architecture."""
    from restorecli import models

    raw = dict(raw)
    overrides = raw.pop("config", None) or {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"model.config must be a mapping, got {type(overrides).__name__}")
    section = _from_mapping(ModelSection, raw, "model")
    if section.name and section.name in models.names():
        entry = models.spec(section.name)
        if section.arch and section.arch != entry.arch:
            raise ConfigError(f"model.arch {section.arch!r} contradicts model.name {section.name!r} ({entry.arch})")
        base = dataclasses.asdict(entry.config)
        arch = entry.arch
    elif section.arch:
        base, arch = {}, section.arch
    else:
        hint = _suggest(section.name, models.names()) if section.name else ""
        raise ConfigError(f"model needs an official model.name or model.arch + model.config{hint}")
    try:
        config = models.config_from_mapping(arch, {**base, **overrides})
    except ConfigError as error:
        raise ConfigError(f"model.config: {error}") from None
    return dataclasses.replace(section, arch=arch, config=config)


def config_from_mapping(mapping: Mapping[str, Any]) -> TrainConfig:
    """Validate a parsed YAML mapping and build the :class:`TrainConfig`.

    Raises:
        ConfigError: unknown/missing keys (with the closest valid key), wrong types or values.
    """
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"a training config must be a mapping, got {type(mapping).__name__}")
    raw = dict(mapping)
    model_raw = raw.get("model")
    if not isinstance(model_raw, Mapping):
        raw.pop("model", None)
        if model_raw is not None:
            raise ConfigError("model must be a mapping")
        raw["model"] = {}
        # Still report unknown keys before the missing model, so the first typo is named.
        _check_keys(raw)
        raise ConfigError("missing config key(s): model")
    _check_keys(raw)
    raw["model"] = {}
    config = _from_mapping(TrainConfig, raw)
    config = dataclasses.replace(config, model=_resolve_model(model_raw))
    _check_values(config)
    return config


def _check_keys(raw: Mapping[str, Any]) -> None:
    valid = sorted(f.name for f in dataclasses.fields(TrainConfig))
    for key in raw:
        if key not in valid:
            raise ConfigError(f"unknown config key {key!s}{_suggest(str(key), valid)}")


def _one_of(value: str, options: Sequence[str], key: str) -> None:
    if value not in options:
        raise ConfigError(f"{key} must be one of {', '.join(options)}; got {value!r}{_suggest(value, options)}")


def _check_values(config: TrainConfig) -> None:
    """Value checks that types alone cannot express."""
    _one_of(config.optim.loss, LOSSES, "optim.loss")
    _one_of(config.optim.type, OPTIMIZERS, "optim.type")
    _one_of(config.schedule.type, SCHEDULES, "schedule.type")
    for i, step in enumerate(config.degradation.steps):
        _one_of(step, DEGRADATIONS, f"degradation.steps[{i}]")
    if not config.data.hq:
        raise ConfigError("data.hq needs at least one folder (pass --set data.hq=PATH)")
    for key, folders in (("data.hq", config.data.hq), ("data.lq", config.data.lq)):
        if any(not folder.strip() for folder in folders):
            raise ConfigError(f"{key} expects folder paths, got an empty one in {list(folders)}")
    names = [s.name for s in config.val.sets]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"val.sets expects one name per set, got {', '.join(map(repr, twice))} more than once")
    if config.data.lq and len(config.data.lq) != len(config.data.hq):
        raise ConfigError(f"data.lq has {len(config.data.lq)} folders but data.hq has {len(config.data.hq)}")
    from restorecli import models

    scale = models.ARCHS[config.model.arch].scale_of(config.model.config)
    if config.degradation.scale != scale:
        raise ConfigError(f"degradation.scale is {config.degradation.scale} but the network upscales x{scale}")
    if scale > 1 and not config.data.lq and "bicubic" not in config.degradation.steps:
        raise ConfigError(f"an x{scale} network on HQ-only data needs 'bicubic' in degradation.steps")
    if scale == 1 and "bicubic" in config.degradation.steps:
        raise ConfigError("degradation.steps has 'bicubic' but degradation.scale is 1")
    positive = {
        "schedule.iterations": config.schedule.iterations,
        "data.patch": config.data.patch,
        "data.batch": config.data.batch,
        "output.log_every": config.output.log_every,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    if config.data.workers < 0 or config.val.every < 0 or config.output.save_every < 0:
        raise ConfigError("data.workers, val.every and output.save_every must be >= 0")
    _check_optim_and_schedule(config)
    if config.seed < 0:
        raise ConfigError(f"seed must be >= 0, got {config.seed}")
    if config.threads < 0:
        raise ConfigError(f"threads must be >= 0 (0 = torch's default), got {config.threads}")
    if config.val.crop_border < -1:
        raise ConfigError(f"val.crop_border must be >= 0, or -1 for the scale; got {config.val.crop_border}")
    if not 0.0 <= config.optim.ema < 1.0:
        raise ConfigError(f"optim.ema must be in [0, 1) (0 = off), got {config.optim.ema}")
    if config.degradation.blur_size <= 0 or config.degradation.blur_size % 2 == 0:
        raise ConfigError(f"degradation.blur_size must be odd and positive, got {config.degradation.blur_size}")
    _check_degradation_ranges(config.degradation)
    if list(config.schedule.milestones) != sorted(config.schedule.milestones):
        raise ConfigError(f"schedule.milestones must increase, got {list(config.schedule.milestones)}")
    _check_progressive(config.data)
    mixup = config.data.mixup
    if not 0.0 <= mixup.prob <= 1.0:
        raise ConfigError(f"data.mixup.prob must be in [0, 1] (0 = off), got {mixup.prob}")
    if mixup.alpha <= 0:
        raise ConfigError(f"data.mixup.alpha must be positive, got {mixup.alpha}")
    if not 0.0 <= config.data.grey <= 1.0:
        raise ConfigError(f"data.grey must be in [0, 1] (0 = off), got {config.data.grey}")
    colour_steps = sorted(set(config.degradation.steps) - set(CHANNEL_BLIND_STEPS))
    if config.data.grey > 0 and colour_steps:
        raise ConfigError(f"data.grey works with the steps {', '.join(CHANNEL_BLIND_STEPS)}; {', '.join(colour_steps)} need colour")


def _check_optim_and_schedule(config: TrainConfig) -> None:
    """Optimiser and schedule numbers inside the domains torch and the schedule accept."""
    optim, schedule = config.optim, config.schedule
    if not (math.isfinite(optim.lr) and optim.lr > 0):
        raise ConfigError(f"optim.lr must be a positive number, got {optim.lr}")
    if not all(0.0 <= beta < 1.0 for beta in optim.betas):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {list(optim.betas)}")
    non_negative = {
        "optim.weight_decay": optim.weight_decay,
        "optim.grad_clip": optim.grad_clip,
        "schedule.warmup": schedule.warmup,
        "schedule.eta_min": schedule.eta_min,
        "schedule.cosine_start": schedule.cosine_start,
    }
    for key, value in non_negative.items():
        if not value >= 0:  # NaN too
            raise ConfigError(f"{key} must be >= 0, got {value}")
    if not optim.charbonnier_eps > 0:
        raise ConfigError(f"optim.charbonnier_eps must be positive, got {optim.charbonnier_eps}")
    if not schedule.gamma > 0:
        raise ConfigError(f"schedule.gamma must be positive, got {schedule.gamma}")
    if any(m < 0 for m in schedule.milestones):
        raise ConfigError(f"schedule.milestones must be iterations >= 0, got {list(schedule.milestones)}")


def _check_degradation_ranges(degradation: DegradationSection) -> None:
    """The ranges of the degradation steps: ordered, and inside their domains."""
    ranges = {
        "noise_sigma": (degradation.noise_sigma, 0.0, None),
        "blur_length": (degradation.blur_length, 0.0, None),
        "haze_transmission": (degradation.haze_transmission, 0.0, 1.0),
        "haze_airlight": (degradation.haze_airlight, 0.0, 1.0),
        "haze_beta": (degradation.haze_beta, 0.0, None),
        "camera_shot": (degradation.camera_shot, 1e-12, None),  # log-uniform: > 0
        "camera_read": (degradation.camera_read, 1e-12, None),
        "camera_jpeg_quality": (degradation.camera_jpeg_quality, 1, 100),
    }
    for name, ((lo, hi), low, high) in ranges.items():
        if not lo <= hi or lo < low or (high is not None and hi > high):  # NaN fails the first test
            domain = f"[{low:g}, {high:g}]" if high is not None else ("> 0" if low > 0 else ">= 0")
            raise ConfigError(f"degradation.{name} must be [low, high] with low <= high, {domain}; got [{lo:g}, {hi:g}]")
    if not 0.0 <= degradation.camera_jpeg_prob <= 1.0:
        raise ConfigError(f"degradation.camera_jpeg_prob must be in [0, 1], got {degradation.camera_jpeg_prob}")
    if not 0.0 <= degradation.haze_tint <= 0.5:
        raise ConfigError(f"degradation.haze_tint must be in [0, 0.5], got {degradation.haze_tint}")


def _check_progressive(data: DataSection) -> None:
    """Stages: equal-length lists of positive numbers; data.patch/batch are the largest stage's."""
    stages = data.progressive
    lists = {"iterations": stages.iterations, "patch": stages.patch, "batch": stages.batch}
    if not any(lists.values()):
        return
    for name, values in lists.items():
        if len(values) != len(stages.iterations):
            raise ConfigError(
                f"data.progressive.{name} has {len(values)} stages but data.progressive.iterations has "
                f"{len(stages.iterations)}; give one value per stage"
            )
        for i, value in enumerate(values):
            if value <= 0:
                raise ConfigError(f"data.progressive.{name}[{i}] must be positive, got {value}")
    for name, largest in (("patch", max(stages.patch)), ("batch", max(stages.batch))):
        if getattr(data, name) != largest:
            raise ConfigError(
                f"data.{name} is {getattr(data, name)} but the largest data.progressive.{name} is {largest}; "
                f"set data.{name}={largest} (with stages it is the largest stage's, as the official recipes)"
            )


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value``; the value is parsed with ``yaml.safe_load`` (``[1, 2]``, ``2e-4``, ``true``).

    Raises:
        ConfigError: no ``=`` or an empty key.
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"--set expects key=value with a dotted key (e.g. optim.lr=2e-4), got {text!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {key}: value {value!r} is not valid YAML ({error.__class__.__name__})") from None
    return key.strip().split("."), parsed


def apply_overrides(mapping: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``mapping`` with each ``key=value`` override set (creating sub-mappings)."""
    result = _deep_copy(mapping)
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a mapping")
            node = child
        node[path[-1]] = value
    return result


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _deep_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_deep_copy(v) for v in value]
    return value


def preset_names() -> list[str]:
    """Names of the presets shipped with the package."""
    folder = resources.files("restorecli") / "presets"
    return sorted(p.name[: -len(".yml")] for p in folder.iterdir() if p.name.endswith(".yml"))


def read_mapping(source: str | Path) -> dict[str, Any]:
    """Read a YAML file, or a shipped preset by name, into a plain mapping.

    Raises:
        ConfigError: no such file or preset, or invalid YAML.
    """
    path = Path(source)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, expected a YAML config file or a preset name")
    if path.is_file():
        origin = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{origin} is not a YAML config: expected UTF-8 text, found binary data") from None
        except OSError as error:
            raise ConfigError(f"{origin}: cannot read: {error.strerror or error}") from None
    elif str(source) in preset_names():
        text = (resources.files("restorecli") / "presets" / f"{source}.yml").read_text(encoding="utf-8")
        origin = f"preset {source}"
    else:
        presets = preset_names()
        raise ConfigError(
            f"no config file or preset named {str(source)!r}{_suggest(str(source), presets)} "
            f"(presets: {', '.join(presets)})"
        )
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{origin} is not valid YAML{where}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{origin} must hold a mapping at top level")
    return _deep_copy(data)


def load_config(source: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a config file or preset, apply ``--set`` overrides, validate."""
    return config_from_mapping(apply_overrides(read_mapping(source), overrides))


def config_to_mapping(config: TrainConfig) -> dict[str, Any]:
    """The plain (YAML/JSON/checkpoint-safe) mapping of a config; round-trips through the loader."""
    # asdict recurses into the architecture config too; lists instead of tuples keep it YAML-plain.
    return _deep_copy(dataclasses.asdict(config))
