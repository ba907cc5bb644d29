"""Progressive patch sizes and batch mixup (the official real-denoising/deblurring recipes).

Config checks, stage arithmetic, the stage-aware batch order (resume, ranks, workers), mixup draws
and a tiny training run that crosses stage boundaries and is resumed exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import smooth_images
from test_train_config_data import TINY as BASE

from restorecli.errors import ConfigError
from restorecli.train import load_config, read_training_checkpoint, train
from restorecli.train import loop as train_loop
from restorecli.train.config import (
    MixupSection,
    apply_overrides,
    config_from_mapping,
    config_to_mapping,
)
from restorecli.train.data import (
    ResumableSampler,
    StageBatchSampler,
    TrainDataset,
    apply_mixup,
    draw_mixup,
    make_loader,
    mixup_rng,
    samples_before,
    stage_index,
    stages,
)

OFFICIAL_SPANS = [184000, 160000, 192000, 182250]

TINY = {
    **BASE,
    "model": {**BASE["model"], "config": {**BASE["model"]["config"], "drop_path_rate": 0.1}},
    "data": {
        "hq": ["hq"], "patch": 16, "batch": 3,
        "progressive": {"iterations": [3, 3, 4], "patch": [8, 12, 16], "batch": [3, 2, 1]},
    },
    "optim": {"lr": 2e-3},
    "output": {"log_every": 100, "tensorboard": False},
}
# Per iteration of TINY: (batch, LQ patch) of stages [3 x (3, 8), 3 x (2, 12), then (1, 16)].
TINY_SHAPES = [(3, 8)] * 3 + [(2, 12)] * 3 + [(1, 16)] * 4


def _config(*overrides: str, base: dict | None = None):
    return config_from_mapping(apply_overrides(base or TINY, list(overrides)))


def _error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        _config(*overrides)
    message = str(info.value)
    assert "\n" not in message  # the CLI prints it as one line
    return message


@pytest.fixture
def hq_folder(tmp_path: Path) -> Path:
    """Three smooth 32x32 images (HQ-only, x2 bicubic)."""
    return smooth_images(tmp_path / "hq", 3)


# --------------------------------------------------------------------------------------------
# Config


def test_progressive_and_mixup_keys_load_and_round_trip() -> None:
    cfg = _config("data.mixup={prob: 0.5}")
    assert cfg.data.progressive.iterations == (3, 3, 4) and cfg.data.progressive.batch == (3, 2, 1)
    assert cfg.data.mixup == MixupSection(prob=0.5, alpha=1.2)
    assert config_from_mapping(config_to_mapping(cfg)) == cfg
    plain = config_from_mapping({**TINY, "data": {"hq": ["hq"], "patch": 16, "batch": 3}})
    assert plain.data.progressive.iterations == () and plain.data.mixup.prob == 0.0  # both off by default


def test_config_errors_name_the_key() -> None:
    assert "data.progressive.batch has 2 stages" in _error("data.progressive.batch=[3, 2]")
    assert "data.progressive.patch has 4 stages" in _error("data.progressive.patch=[8, 12, 16, 16]")
    assert "data.progressive.iterations[1] must be positive" in _error("data.progressive.iterations=[3, 0, 4]")
    assert "data.progressive.batch[2] must be positive" in _error("data.progressive.batch=[3, 2, -1]")
    assert "data.progressive.patch[0] must be positive" in _error("data.progressive.patch=[0, 12, 16]")
    message = _error("data.patch=8")
    assert "data.patch is 8" in message and "largest data.progressive.patch is 16" in message
    assert "data.batch=3" in _error("data.batch=4")
    assert "'data.progressive.patch'" in _error("data.progressive.patches=[8, 12, 16]")
    assert "must be an integer" in _error("data.progressive.iterations=[3, 1.5, 4]")
    assert "data.mixup.prob must be in [0, 1]" in _error("data.mixup.prob=1.5")
    assert "data.mixup.alpha must be positive" in _error("data.mixup.prob=0.5", "data.mixup.alpha=0")
    assert "'data.mixup.alpha'" in _error("data.mixup.alpah=1")


def test_presets_carry_the_official_schedules() -> None:
    realdn = load_config("mair-realdn", ["data.hq=[hq]", "data.lq=[lq]"])
    deblur = load_config("mair-deblur", ["data.hq=[hq]", "data.lq=[lq]"])
    for cfg in (realdn, deblur):
        spans = cfg.data.progressive
        assert list(spans.iterations) == OFFICIAL_SPANS and sum(spans.iterations) == cfg.schedule.iterations
        assert spans.patch == (128, 160, 192, 256) and spans.batch == (4, 2, 1, 1)
        assert (cfg.data.patch, cfg.data.batch) == (256, 4)
    assert realdn.data.mixup == MixupSection(prob=0.5, alpha=1.2)
    assert deblur.data.mixup.prob == 0.0


# --------------------------------------------------------------------------------------------
# Stages


def test_stage_selection_by_iteration() -> None:
    """0-based iteration i is in the first stage whose cumulative span exceeds i (official 1-based
    ``current_iter <= sum(iters[:j+1])``); past the last span the last stage continues."""
    data = load_config("mair-realdn", ["data.hq=[hq]", "data.lq=[lq]"]).data
    assert [s.start for s in stages(data)] == [0, 184000, 344000, 536000]
    expected = {0: 0, 183999: 0, 184000: 1, 343999: 1, 344000: 2, 535999: 2, 536000: 3, 718249: 3, 900000: 3}
    assert {i: stage_index(data, i) for i in expected} == expected
    plain = _config("data.progressive={}").data
    assert stages(plain) == stages(_config("data.progressive={iterations: [5], patch: [16], batch: [3]}").data)
    assert stage_index(plain, 10**9) == 0


def test_samples_before_counts_each_iterations_batch() -> None:
    data = _config().data
    per_iteration = [stages(data)[stage_index(data, i)].batch for i in range(20)]
    assert per_iteration[:10] == [b for b, _ in TINY_SHAPES]
    for i in range(20):
        assert samples_before(data, i) == sum(per_iteration[:i]), i
    assert samples_before(_config("data.progressive={}").data, 7) == 7 * 3


@pytest.mark.parametrize(("rank", "world"), [(0, 1), (0, 2), (1, 2)])
def test_stage_batches_cut_the_rank_order_and_resume(rank: int, world: int) -> None:
    data = _config().data
    full = list(itertools.islice(StageBatchSampler(data, 5, seed=7, rank=rank, world=world), 14))
    assert [(len(b), b[0][2]) for b in full[:10]] == TINY_SHAPES
    assert all(key[2] == batch[0][2] for batch in full for key in batch)
    # Concatenated, the batches are exactly this rank's DistributedSampler-style order.
    keys = [(e, i) for batch in full for e, i, _ in batch]
    assert keys == list(itertools.islice(ResumableSampler(5, seed=7, rank=rank, world=world), len(keys)))
    for start in (2, 3, 4, 6, 9):
        resumed = list(itertools.islice(StageBatchSampler(data, 5, seed=7, rank=rank, world=world, start_iteration=start), 14 - start))
        assert resumed == full[start:], start


def test_loader_shapes_change_at_stage_boundaries_with_any_workers(hq_folder: Path) -> None:
    cfg = _config(f"data.hq=[{hq_folder}]")
    batches = {}
    for workers in (0, 2):
        data = _config(f"data.hq=[{hq_folder}]", f"data.workers={workers}").data
        loader = make_loader(TrainDataset(data, cfg.degradation, cfg.seed), world=1, start_iteration=0)
        batches[workers] = [next(loader) for _ in range(10)]
        del loader  # shuts the worker processes down
    for (lq, hq), (n, p) in zip(batches[0], TINY_SHAPES):
        assert lq.shape == (n, 3, p, p) and hq.shape == (n, 3, 2 * p, 2 * p)
    for (lq0, hq0), (lq2, hq2) in zip(batches[0], batches[2]):
        assert torch.equal(lq0, lq2) and torch.equal(hq0, hq2)
    # A loader resumed inside the second stage continues the same batches.
    resumed = make_loader(TrainDataset(cfg.data, cfg.degradation, cfg.seed), world=1, start_iteration=4)
    for lq, hq in batches[0][4:]:
        again = next(resumed)
        assert torch.equal(again[0], lq) and torch.equal(again[1], hq)


# --------------------------------------------------------------------------------------------
# Mixup


def _distinct_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample k of the LQ batch is the constant k, of the HQ batch 10 k + 1 (twice the size)."""
    lq = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 4, 4).clone()
    return lq, (10 * lq + 1).repeat_interleave(2, -1).repeat_interleave(2, -2)


def test_mixup_is_the_lambda_combination_with_one_permutation() -> None:
    lq, hq = _distinct_batch(6)
    cfg = MixupSection(prob=1.0, alpha=1.2)
    for iteration in range(20):
        lam, perm = draw_mixup(cfg, 6, mixup_rng(3, 0, iteration))
        assert 0.0 < lam < 1.0 and sorted(perm.tolist()) == list(range(6))
        out_lq, out_hq = apply_mixup(lq, hq, cfg, mixup_rng(3, 0, iteration))
        values = torch.tensor([lam * k + (1 - lam) * int(perm[k]) for k in range(6)])
        assert torch.allclose(out_lq, values.view(6, 1, 1, 1).expand_as(lq), atol=1e-6)
        assert out_hq.shape == hq.shape
        # The same λ and permutation on HQ: each HQ sample is 10 x its LQ sample + 1.
        assert torch.allclose(out_hq[..., ::2, ::2], 10 * out_lq + 1, atol=1e-5)


def test_mixup_probability_and_beta_statistics() -> None:
    lq, hq = _distinct_batch(4)
    never = MixupSection(prob=0.0)
    for iteration in range(50):
        assert draw_mixup(never, 4, mixup_rng(0, 0, iteration)) is None
        out = apply_mixup(lq, hq, never, mixup_rng(0, 0, iteration))
        assert out[0] is lq and out[1] is hq
    always = MixupSection(prob=1.0)
    assert all(draw_mixup(always, 4, mixup_rng(0, 0, i)) is not None for i in range(500))
    half = [draw_mixup(MixupSection(prob=0.5), 4, mixup_rng(0, 0, i)) for i in range(4000)]
    mixed = [d[0] for d in half if d is not None]
    assert 0.46 < len(mixed) / len(half) < 0.54
    # Beta(1.2, 1.2): mean 1/2, variance a^2 / ((2a)^2 (2a + 1)) = 0.0735.
    assert abs(np.mean(mixed) - 0.5) < 0.02 and abs(np.var(mixed) - 0.0735) < 0.008
    # Draws differ between ranks and iterations and repeat for the same ones.
    assert draw_mixup(always, 4, mixup_rng(0, 1, 5))[0] != draw_mixup(always, 4, mixup_rng(0, 0, 5))[0]
    assert draw_mixup(always, 4, mixup_rng(0, 0, 5))[0] == draw_mixup(always, 4, mixup_rng(0, 0, 5))[0]


# --------------------------------------------------------------------------------------------
# A tiny run across stage boundaries


def test_tiny_run_follows_the_stages_and_resumes_exactly(hq_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages (3, 8) x3, (2, 12) x3, (1, 16) x4 with mixup p 1/2 and drop-path; stop at 4 and 7, resume."""
    shapes: list[list[tuple[int, int, int]]] = []
    mixed: list[bool] = []
    real_loader, real_mixup = train_loop.make_loader, train_loop.apply_mixup

    def spy_loader(*args: object, **kwargs: object) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        run = []
        shapes.append(run)
        for lq, hq in real_loader(*args, **kwargs):
            run.append((lq.shape[0], lq.shape[-1], hq.shape[-1]))
            yield lq, hq

    def spy_mixup(lq: torch.Tensor, hq: torch.Tensor, *args: object) -> tuple[torch.Tensor, torch.Tensor]:
        out = real_mixup(lq, hq, *args)
        mixed.append(out[0] is not lq)
        return out

    monkeypatch.setattr(train_loop, "make_loader", spy_loader)
    monkeypatch.setattr(train_loop, "apply_mixup", spy_mixup)
    base = [f"data.hq=[{hq_folder}]", "data.mixup.prob=0.5"]
    full = train(_config(*base, f"output.dir={tmp_path / 'a'}"))
    assert shapes[0] == [(n, p, 2 * p) for n, p in TINY_SHAPES]
    assert 0 < sum(mixed[:6]) < 6  # some batches of the first stages were mixed, some not
    cfg = _config(*base, f"output.dir={tmp_path / 'b'}")
    first = train(cfg, stop_at=4)
    second = train(cfg, resume=tmp_path / "b" / "latest.pth", stop_at=7)
    rest = train(cfg, resume=tmp_path / "b" / "latest.pth")
    # The resumed loaders start inside stage 2 (iteration 4) and inside stage 3 (iteration 7).
    assert shapes[1:] == [shapes[0][:4], shapes[0][4:7], shapes[0][7:]]
    assert first.losses + second.losses + rest.losses == full.losses
    a = read_training_checkpoint(tmp_path / "a" / "latest.pth")["params"]
    b = read_training_checkpoint(tmp_path / "b" / "latest.pth")["params"]
    assert all(torch.equal(a[key], b[key]) for key in a)
