"""restorecli/bench.py: the breakdown table, FLOP counts, and one tiny run's report (no timing assertions)."""

from __future__ import annotations

import json

import pytest

from restorecli import bench
from restorecli.errors import UnknownModelError, UsageError

TINY = "restorecli-light-x4"  # the bundled 279 K-parameter network, built from its manifest config


@pytest.mark.parametrize(
    ("event", "category"),
    [
        ("_OrderedKernelScan", "scan"),
        ("_KernelScan", "scan"),
        ("selective_scan_fn", "scan"),
        ("aten::gather", "order"),
        ("aten::index_select", "order"),
        ("aten::index", "order"),
        ("aten::scatter_add_", "order"),
        ("_ScatterToScans", "order"),
        ("aten::mm", "linear_conv"),
        ("aten::addmm", "linear_conv"),
        ("aten::mkldnn_convolution", "linear_conv"),
        ("aten::native_layer_norm", "norm_elementwise"),
        ("aten::add_", "norm_elementwise"),
        ("aten::softplus", "norm_elementwise"),
        ("aten::copy_", "copy"),
        ("aten::clone", "copy"),
        ("aten::view", "other"),
        ("aten::empty", "other"),
        ("aten::indices", "other"),
    ],
)
def test_categorize_follows_the_table(event: str, category: str) -> None:
    assert bench.categorize(event) == category


def test_manifest_networks_are_counted_like_models_stats() -> None:
    from restorecli import models

    spec = models.spec("mair-light-t-x4")
    as_manifest = bench.Network(name=spec.name, arch=spec.arch, config=spec.config, official=False)
    assert bench.forward_flops(as_manifest, 16, 24) == models.stats(spec.name, 16, 24).flops > 0


def test_resolve_network_knows_bundled_names_and_suggests() -> None:
    assert bench.resolve_network(TINY).official is False
    assert bench.resolve_network("mair-light-t-x4").official is True
    with pytest.raises(UnknownModelError, match="restorecli-light-x4"):
        bench.resolve_network("restorecli-lite-x4")


@pytest.mark.parametrize(
    ("changes", "option"),
    [({"sizes": (0, 8)}, "--sizes"), ({"threads": (-1,)}, "--threads"), ({"repeats": 0}, "--repeats"), ({"models": ()}, "--models")],
)
def test_settings_out_of_range_are_usage_errors(changes: dict, option: str) -> None:
    with pytest.raises(UsageError, match=option):
        bench.run_benchmark(bench.BenchSettings(**changes))


def test_one_tiny_run_reports_every_measurement() -> None:
    settings = bench.BenchSettings(models=(TINY,), sizes=(16, 8), threads=(1,), repeats=1, train_batch=2, train_patch=8)
    lines: list[str] = []
    report = bench.run_benchmark(settings, command="restore bench", progress=lines.append)

    (gemm,) = report.gemm
    assert gemm.threads == 1 and gemm.gflops > 0
    assert [(r.model, r.threads, r.size) for r in report.forward] == [(TINY, 1, 8), (TINY, 1, 16)]  # smallest first
    network = bench.resolve_network(TINY)
    for row in report.forward:
        assert row.flops == bench.forward_flops(network, row.size, row.size)
        assert row.gflops == pytest.approx(row.flops / row.seconds / 1e9)
        assert row.roofline_share == pytest.approx(row.gflops / gemm.gflops)
        assert set(row.breakdown_ms) == set(bench.CATEGORIES)
        assert row.breakdown_ms["scan"] > 0 and row.breakdown_ms["linear_conv"] > 0
    first, second = report.forward
    assert first.pixel_cost == 1.0
    assert second.pixel_cost == pytest.approx((second.seconds / 16**2) / (first.seconds / 8**2))
    (train,) = report.train
    assert (train.batch, train.patch) == (2, 8)
    assert train.flops == 3 * 2 * bench.forward_flops(network, 8, 8)
    assert report.skipped == ()
    assert len(lines) == 4  # gemm, train, two sizes

    document = json.loads(json.dumps(report.to_dict()))
    assert [row["kind"] for row in document["rows"]] == ["forward", "forward", "train"]
    assert document["meta"]["command"] == "restore bench"
    assert document["meta"]["scan_backend"] in ("cpu", "ref")
    assert document["meta"]["train_flops"] == bench.TRAIN_FLOPS_CONVENTION
    assert "last_level_cache_per_cpu" in document["meta"]["machine"]
    text = bench.format_markdown(report)
    assert "| model | threads | input | forward s |" in text and "| 2 × 8² |" in text


def test_slow_sizes_are_skipped_and_named() -> None:
    settings = bench.BenchSettings(
        models=(TINY,), sizes=(8, 12, 16), threads=(1,), repeats=1, train_batch=0, skip_slower_than=1e-9, breakdown=False
    )
    report = bench.run_benchmark(settings)
    assert [r.size for r in report.forward] == [8]
    assert report.forward[0].breakdown_ms is None
    assert report.train == ()
    (skip,) = report.skipped
    assert (skip.model, skip.threads, skip.sizes) == (TINY, 1, (12, 16))
    assert "Skipped restorecli-light-x4" in bench.format_markdown(report)
