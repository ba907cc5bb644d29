"""The named VAMamba models: ``vamamba-base`` (official sizes) and ``vamamba-light`` (CPU-friendly).

No official VAMamba checkpoints are published, so every entry has
``official_file=""``; they are trained with ``restore train``. All named models are the paper's
model, QCLAM and GPS-SS2D both on; the ablations (``scan="cross"``/``"gps"``, ``qclam=False``) are
reached through ``build_arch("vamamba", ...)`` or a training config.

Same-size configs serve dehazing (the official task), denoising and deblurring; one name per task
so that the CLI's task checks work. ``base`` SR uses the pixelshuffle head, ``light`` SR the
pixelshuffledirect head (with the light CAB), as in the official code.
"""

from __future__ import annotations

from dataclasses import replace

from restorecli.models.vamamba import VAMambaConfig
from restorecli.models.zoo import ModelSpec

# Spec section 1.1: C 180, 6 x 6 blocks, D = int(1.2 C) = 216, N 16, LoRA width 16, cache 5.
# The GPS patch (16) is smaller than the official 32/64 so that 64^2 training crops still have a
# 4 x 4 patch grid to plan over; the score ViT is ours (the official one is never trained).
VAMAMBA_BASE = VAMambaConfig(
    upscale=1, in_chans=3, img_range=1.0, embed_dim=180, depths=(6,) * 6, d_state=16, mlp_ratio=1.2,
    upsampler="", resi_connection="1conv", scan="both", qclam=True, lora_rank=16, cache_size=5,
    gps_patch=16, vit_dim=64, vit_layers=1, vit_heads=4,
)  # fmt: skip
VAMAMBA_LIGHT = VAMambaConfig(
    upscale=1, in_chans=3, img_range=1.0, embed_dim=48, depths=(4,) * 4, d_state=8, mlp_ratio=1.2,
    upsampler="", resi_connection="1conv", scan="both", qclam=True, lora_rank=8, cache_size=3,
    gps_patch=8, vit_dim=32, vit_layers=1, vit_heads=2,
)  # fmt: skip
_SR_HEAD = {"base": "pixelshuffle", "light": "pixelshuffledirect"}
_SAME_SIZE_TASKS = (("", "dehaze"), ("-dn", "denoise"), ("-deblur", "deblur"))


def _table() -> dict[str, ModelSpec]:
    specs: list[ModelSpec] = []
    for variant, config in (("base", VAMAMBA_BASE), ("light", VAMAMBA_LIGHT)):
        for suffix, task in _SAME_SIZE_TASKS:
            specs.append(ModelSpec(f"vamamba-{variant}{suffix}", "vamamba", task, 1, None, None, config, ""))
        for scale in (2, 3, 4):
            sr = replace(config, upscale=scale, upsampler=_SR_HEAD[variant])
            specs.append(ModelSpec(f"vamamba-{variant}-sr-x{scale}", "vamamba", "sr", scale, None, None, sr, ""))
    # Trained by restorecli (docs/training.md, "VAMamba against MaIR at equal CPU time"): the light
    # x4 network with the bundled MaIR x4 model's recipe; chosen with --model, never a default.
    light_x4 = replace(VAMAMBA_LIGHT, upscale=4, upsampler=_SR_HEAD["light"], drop_path_rate=0.0)
    specs.append(ModelSpec("restorecli-vamamba-light-x4", "vamamba", "sr", 4, None, None, light_x4, ""))
    return {spec.name: spec for spec in sorted(specs, key=lambda s: s.name)}


VAMAMBA_MODELS: dict[str, ModelSpec] = _table()
