"""Networks and the explicit model table.

    >>> from restorecli import models
    >>> models.names()[:2]
    ['mair-deblur', 'mair-dehaze-its']
    >>> net = models.build("mair-light-t-x4")          # random init
    >>> models.load_checkpoint(net, "MaIR_T_lightSR_x4.pth")   # official file, strict

Two explicit tables, nothing registers itself: ``ARCHS`` (architecture id -> module, config and the
facts every network of it shares) and ``MODELS`` (name -> architecture, task and config; see
``zoo.py`` and ``vamamba_zoo.py``). Weight files are joined to ``MODELS`` by name in the weights
manifest (``restorecli.hub.manifest``). To load a network with its weights, use
``restorecli.load_model``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from restorecli.errors import ConfigError, UnknownModelError
from restorecli.models.blocks import SelectiveScanLayer, set_scan_backend
from restorecli.models.checkpoint import Checkpoint, layout_mismatch, load_checkpoint, read_checkpoint, save_checkpoint
from restorecli.models.descriptor import LoadedModel, SizeRule, TilingPolicy, WeightsProvenance
from restorecli.models.mair import MaIR, MaIRConfig
from restorecli.models.mairunet import SIZE_MULTIPLE, MaIRUNet, MaIRUNetConfig
from restorecli.models.vamamba import VAMamba, VAMambaConfig
from restorecli.models.vamamba_zoo import VAMAMBA_MODELS
from restorecli.models.zoo import OFFICIAL_MODELS, RESTORECLI_MODELS, ModelSpec

AnyConfig = MaIRConfig | MaIRUNetConfig | VAMambaConfig
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True, kw_only=True)
class Architecture:
    """One architecture: how to build it and what every network of it declares.

    Attributes:
        module: The ``nn.Module`` class (keyword-only constructor, the config's fields).
        config: The frozen config dataclass.
        size_rule: Input side requirements (MaIRUNet: multiples of 8, three 2x down-samplings).
        tiling: Tiled-inference policy.
        precisions: Compute precisions it supports.
        scale_of: Output/input side ratio of a config.
        channels_of: (input, output) channels of a config.
    """

    module: type[nn.Module]
    config: type
    size_rule: SizeRule
    tiling: TilingPolicy
    precisions: tuple[str, ...]
    scale_of: Callable[[Any], int]
    channels_of: Callable[[Any], tuple[int, int]]


def _head_scale(config: MaIRConfig | VAMambaConfig) -> int:
    return config.upscale if config.upsampler else 1  # a same-size head ignores upscale


# The whole architecture table.
ARCHS: dict[str, Architecture] = {
    "mair": Architecture(
        module=MaIR, config=MaIRConfig, size_rule=SizeRule(), tiling=TilingPolicy(), precisions=PRECISIONS,
        scale_of=_head_scale, channels_of=lambda c: (c.in_chans, c.in_chans),
    ),
    "mairunet": Architecture(
        module=MaIRUNet, config=MaIRUNetConfig, size_rule=SizeRule(multiple_of=SIZE_MULTIPLE), tiling=TilingPolicy(),
        precisions=PRECISIONS, scale_of=lambda _c: 1, channels_of=lambda c: (c.inp_channels, c.out_channels),
    ),
    "vamamba": Architecture(
        module=VAMamba, config=VAMambaConfig, size_rule=SizeRule(), tiling=TilingPolicy(), precisions=PRECISIONS,
        scale_of=_head_scale, channels_of=lambda c: (c.in_chans, c.in_chans),
    ),
}  # fmt: skip
# Every named model: the official MaIR variants, restorecli's trained ones and the VAMamba configs.
MODELS: dict[str, ModelSpec] = {**OFFICIAL_MODELS, **RESTORECLI_MODELS, **VAMAMBA_MODELS}

__all__ = [
    "ARCHS",
    "PRECISIONS",
    "Architecture",
    "Checkpoint",
    "LoadedModel",
    "SizeRule",
    "TilingPolicy",
    "RunFacts",
    "WeightsProvenance",
    "MaIR",
    "MaIRConfig",
    "MaIRUNet",
    "MaIRUNetConfig",
    "ModelSpec",
    "ModelStats",
    "VAMamba",
    "VAMambaConfig",
    "build",
    "arch_stats",
    "build_arch",
    "config_from_mapping",
    "identify",
    "load_checkpoint",
    "names",
    "read_checkpoint",
    "run_facts",
    "save_checkpoint",
    "set_scan_backend",
    "spec",
    "stats",
]


def names() -> list[str]:
    """Names of all named model variants, sorted."""
    return sorted(MODELS)


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def spec(name: str) -> ModelSpec:
    """The table entry of a model name.

    Raises:
        UnknownModelError: the name is not in the table (with the closest valid name).
    """
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}{_suggest(name, names())} (see `restore models list`)") from None


def config_from_mapping(arch: str, config: Mapping[str, Any]) -> AnyConfig:
    """Turn a plain mapping (manifest, checkpoint metadata, YAML) into the arch's frozen config.

    Raises:
        ConfigError: unknown architecture, unknown or missing key (with the closest valid key).
    """
    if arch not in ARCHS:
        raise ConfigError(f"unknown architecture {arch!r}; expected one of {sorted(ARCHS)}{_suggest(arch, sorted(ARCHS))}")
    config_type = ARCHS[arch].config
    valid = {field.name: field for field in fields(config_type)}
    for key in config:
        if key not in valid:
            raise ConfigError(f"unknown {arch} config key {key!r}{_suggest(key, sorted(valid))}")
    required = [
        f.name for f in valid.values() if f.default is MISSING and f.default_factory is MISSING and f.name not in config
    ]
    if required:
        raise ConfigError(f"missing {arch} config key(s): {', '.join(required)}")
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in config.items()}
    return config_type(**values)


def build_arch(
    arch: str,
    config: Mapping[str, Any] | MaIRConfig | MaIRUNetConfig | VAMambaConfig,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Build a network of architecture ``arch`` from a config (random init).

    Args:
        arch: ``mair``, ``mairunet`` or ``vamamba``.
        config: the arch's config dataclass or an equivalent mapping.
        device: where parameters live; ``meta`` allocates nothing (for shape checks).
    """
    cfg = config_from_mapping(arch, config) if isinstance(config, Mapping) else config
    if arch not in ARCHS or not isinstance(cfg, ARCHS[arch].config):
        raise ConfigError(f"a {type(cfg).__name__} does not configure architecture {arch!r}; expected one of {sorted(ARCHS)}")
    _check_sizes(arch, cfg)
    module_type = ARCHS[arch].module
    with torch.device(device):
        module = module_type(**asdict(cfg))
    return module.eval()


_POSITIVE_SIZES = (
    "upscale", "in_chans", "embed_dim", "d_state", "scan_len", "inp_channels", "out_channels", "dim",
    "ssm_ratio", "mlp_ratio", "flp_ratio", "img_range",
)  # fmt: skip
_BLOCK_COUNTS = ("depths", "num_blocks")


def _check_sizes(arch: str, cfg: Any) -> None:
    """Sizes that no network can have (a zero width, no blocks) as one ConfigError, not torch's."""
    values = asdict(cfg)
    for key in _POSITIVE_SIZES:
        if key in values and not values[key] > 0:  # NaN too
            raise ConfigError(f"{arch} config: {key} must be positive, got {values[key]!r}")
    for key in _BLOCK_COUNTS:
        if key in values:
            counts = list(values[key])
            if not counts or any(count < 1 for count in counts):
                raise ConfigError(f"{arch} config: {key} must list one or more block counts >= 1, got {counts}")
    rate = values.get("drop_path_rate", 0.0)
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"{arch} config: drop_path_rate must be in [0, 1), got {rate!r}")


def build(name: str, device: str | torch.device = "cpu") -> nn.Module:
    """Build an official model variant by name (random init, eval mode)."""
    entry = spec(name)
    return build_arch(entry.arch, entry.config, device=device)


@lru_cache(maxsize=None)
def _layout(name: str) -> dict[str, torch.Size]:
    return {key: value.shape for key, value in build(name, device="meta").state_dict().items()}


def identify(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Official names whose keys and shapes equal those of ``state_dict`` (several may share a layout)."""
    return [name for name in names() if layout_mismatch(_layout(name), state_dict) is None]


@dataclass(frozen=True)
class ModelStats:
    """Size and cost of a network on one input.

    Attributes:
        params: number of parameters.
        flops: total floating-point operations (dense + scan), one forward, batch 1.
        dense_flops: convolutions, linear layers, einsums as counted by torch's flop counter.
        scan_flops: the selective scan, 9·L·D·N + L·D per mixer (the upstream analysis convention).
    """

    params: int
    flops: int
    dense_flops: int
    scan_flops: int


def stats(name: str, height: int, width: int) -> ModelStats:
    """Parameters and FLOPs of a named model on a (3, height, width) input, computed on the meta device."""
    entry = spec(name)
    return arch_stats(entry.arch, entry.config, height, width)


def arch_stats(arch: str, config: Mapping[str, Any] | MaIRConfig | MaIRUNetConfig | VAMambaConfig, height: int, width: int) -> ModelStats:
    """:func:`stats` of an architecture and config (for networks outside the model table)."""
    from torch.utils.flop_counter import FlopCounterMode

    module = build_arch(arch, config, device="meta")
    scan_flops = 0

    def count_scan(layer: nn.Module, inputs: tuple[torch.Tensor, ...], _: object) -> None:
        nonlocal scan_flops
        batch, h, w, _c = inputs[0].shape
        scan_flops += batch * h * w * layer.directions * layer.inner * (9 * layer.d_state + 1)

    hooks = [m.register_forward_hook(count_scan) for m in module.modules() if isinstance(m, SelectiveScanLayer)]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(torch.empty(1, module.in_chans, height, width, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    dense = int(counter.get_total_flops())
    params = sum(p.numel() for p in module.parameters())
    return ModelStats(params=params, flops=dense + scan_flops, dense_flops=dense, scan_flops=scan_flops)


@dataclass(frozen=True, kw_only=True)
class RunFacts:
    """What running a network needs to know: scale, input channels, side rule."""

    scale: int
    in_channels: int
    size_rule: SizeRule


def run_facts(model: LoadedModel | nn.Module) -> RunFacts:
    """The run facts of a loaded model, or of a bare module (library and test use).

    A :class:`LoadedModel` carries them. A bare module of a table architecture declares
    ``upscale`` and ``in_chans`` and takes its side rule from the table; any other module must
    declare ``upscale`` and may declare ``in_chans`` (default 3) and ``size_rule`` (this is the
    whole contract for modules the tool did not build).
    """
    if isinstance(model, LoadedModel):
        return RunFacts(scale=model.scale, in_channels=model.in_channels, size_rule=model.size_rule)
    declared = {key: value for cls in reversed(type(model).__mro__) for key, value in vars(cls).items()} | vars(model)
    for architecture in ARCHS.values():
        if isinstance(model, architecture.module):
            return RunFacts(scale=int(model.upscale), in_channels=int(model.in_chans), size_rule=architecture.size_rule)
    if "upscale" not in declared:
        raise TypeError(f"a {type(model).__name__} does not declare upscale; load networks with restorecli.load_model")
    rule = declared.get("size_rule")
    return RunFacts(
        scale=int(declared["upscale"]),
        in_channels=int(declared.get("in_chans", 3)),
        size_rule=SizeRule(multiple_of=int(rule.multiple_of), min_size=int(rule.min_size)) if rule is not None else SizeRule(),
    )
