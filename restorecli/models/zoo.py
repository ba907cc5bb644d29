"""The table of MaIR models: name -> architecture, task and network config.

Official variants take the values of the official option files (docs/models.md); the
``restorecli-*`` models are small networks trained by this project (their weights ship in
``restorecli/weights``). Weight files, checksums and scores live in the weights manifest, joined
to this table by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from restorecli.models.mair import MaIRConfig
from restorecli.models.mairunet import MaIRUNetConfig
from restorecli.models.vamamba import VAMambaConfig


@dataclass(frozen=True)
class ModelSpec:
    """One named model.

    Attributes:
        name: public name, ``<arch>-<task>-<variant>``.
        arch: architecture id (``mair``, ``mairunet`` or ``vamamba``).
        task: ``sr``, ``denoise``, ``deblur`` or ``dehaze``.
        scale: output/input size ratio (1 for same-size tasks).
        sigma: Gaussian noise level (0-255 scale) for synthetic denoising models, else None.
        variant: task variant (``real`` noise; dehaze ``indoor``/``outdoor``/``mix``), else None.
        config: network config (a mapping only for a model a user manifest adds, checked when built).
        official_file: file name of the official checkpoint; ``""`` for models without official
            weights (restorecli-trained, VAMamba).
    """

    name: str
    arch: str
    task: str
    scale: int
    sigma: int | None
    variant: str | None
    config: MaIRConfig | MaIRUNetConfig | VAMambaConfig | Mapping[str, Any]
    official_file: str

    def config_dict(self) -> dict[str, Any]:
        """The config as a plain dict (tuples kept), for manifests and checkpoint metadata."""
        return dict(self.config) if isinstance(self.config, Mapping) else asdict(self.config)


def _classic_sr(scale: int) -> MaIRConfig:
    return MaIRConfig(
        upscale=scale, in_chans=3, img_range=1.0, embed_dim=180, depths=(6,) * 6, d_state=16,
        ssm_ratio=2.0, mlp_ratio=2.5, upsampler="pixelshuffle", resi_connection="1conv", scan_len=8,
    )


def _light_small(scale: int) -> MaIRConfig:
    return MaIRConfig(
        upscale=scale, in_chans=3, img_range=1.0, embed_dim=60, depths=(6,) * 4, d_state=16,
        ssm_ratio=1.4, mlp_ratio=1.6, upsampler="pixelshuffledirect", resi_connection="1conv", scan_len=4,
    )


def _light_tiny(scale: int) -> MaIRConfig:
    return MaIRConfig(
        upscale=scale, in_chans=3, img_range=1.0, embed_dim=60, depths=(6,) * 4, d_state=1,
        ssm_ratio=1.1, mlp_ratio=1.6, upsampler="pixelshuffledirect", resi_connection="1conv", scan_len=8,
    )


_COLOR_DENOISE = MaIRConfig(
    upscale=1, in_chans=3, img_range=1.0, embed_dim=180, depths=(6,) * 6, d_state=16,
    ssm_ratio=1.3, mlp_ratio=2.0, upsampler="", resi_connection="1conv", scan_len=4,
)
_UNET_LARGE = MaIRUNetConfig(
    inp_channels=3, out_channels=3, dim=48, num_blocks=(4, 6, 6, 8), num_refinement_blocks=4,
    ssm_ratio=2.0, mlp_ratio=1.5, flp_ratio=4.0, bias=False, scan_len=4,
)
_UNET_DEHAZE = MaIRUNetConfig(
    inp_channels=3, out_channels=3, dim=24, num_blocks=(2, 2, 3, 4), num_refinement_blocks=2,
    ssm_ratio=1.2, mlp_ratio=2.0, flp_ratio=2.0, bias=False, scan_len=8,
)


def _official_table() -> dict[str, ModelSpec]:
    specs: list[ModelSpec] = []
    for scale in (2, 3, 4):
        specs += [
            ModelSpec(f"mair-sr-x{scale}", "mair", "sr", scale, None, None, _classic_sr(scale), f"MaIR_SR_x{scale}.pth"),
            ModelSpec(f"mair-light-s-x{scale}", "mair", "sr", scale, None, None, _light_small(scale), f"MaIR_S_lightSR_x{scale}.pth"),
            ModelSpec(f"mair-light-t-x{scale}", "mair", "sr", scale, None, None, _light_tiny(scale), f"MaIR_T_lightSR_x{scale}.pth"),
        ]
    for sigma in (15, 25, 50):
        specs.append(ModelSpec(f"mair-dn-s{sigma}", "mair", "denoise", 1, sigma, None, _COLOR_DENOISE, f"MaIR_CDN_s{sigma}.pth"))
    specs += [
        ModelSpec("mair-realdn", "mairunet", "denoise", 1, None, "real", _UNET_LARGE, "MaIR_RealDN.ckpt"),
        ModelSpec("mair-deblur", "mairunet", "deblur", 1, None, None, _UNET_LARGE, "MaIR_MotionDeblur.ckpt"),
        ModelSpec("mair-dehaze-its", "mairunet", "dehaze", 1, None, "indoor", _UNET_DEHAZE, "MaIR_DH_ITS.pth"),
        ModelSpec("mair-dehaze-ots", "mairunet", "dehaze", 1, None, "outdoor", _UNET_DEHAZE, "MaIR_DH_OTS.pth"),
        ModelSpec("mair-dehaze-r6k", "mairunet", "dehaze", 1, None, "mix", _UNET_DEHAZE, "MaIR_DH_R6K.pth"),
    ]
    return {spec.name: spec for spec in sorted(specs, key=lambda s: s.name)}


OFFICIAL_MODELS: dict[str, ModelSpec] = _official_table()


def _restorecli_light(scale: int, groups: int = 3) -> MaIRConfig:
    # groups = 4: the ×4 and denoising files grew a fourth group in a continuation run
    # (scripts/grow_mair.py, docs/training.md)
    return MaIRConfig(
        upscale=scale, in_chans=3, img_range=1.0, embed_dim=48, depths=(2,) * groups, d_state=1, ssm_ratio=1.1,
        mlp_ratio=1.6, upsampler="pixelshuffledirect" if scale > 1 else "", resi_connection="1conv", scan_len=8,
        drop_path_rate=0.0,
    )  # fmt: skip


# Trained with `restore train` (presets restorecli-light-*-cpu); one blind denoiser for every sigma.
RESTORECLI_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("restorecli-light-dn", "mair", "denoise", 1, None, None, _restorecli_light(1, groups=4), ""),
        ModelSpec("restorecli-light-x2", "mair", "sr", 2, None, None, _restorecli_light(2), ""),
        ModelSpec("restorecli-light-x3", "mair", "sr", 3, None, None, _restorecli_light(3), ""),
        ModelSpec("restorecli-light-x4", "mair", "sr", 4, None, None, _restorecli_light(4, groups=4), ""),
        ModelSpec("restorecli-light-dehaze", "mair", "dehaze", 1, None, None, _restorecli_light(1), ""),
        ModelSpec("restorecli-light-realdn", "mair", "denoise", 1, None, "real", _restorecli_light(1), ""),
        ModelSpec("restorecli-light-deblur", "mair", "deblur", 1, None, None, _restorecli_light(1), ""),
    )
}
