"""restorecli.eval_plan: which task, scale and noise level a `restore eval` call means."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from restorecli.errors import UsageError
from restorecli.eval_plan import EvalPlan, infer_task, plan_evaluation


def test_task_follows_sigma_then_model_then_set() -> None:
    sr_model = SimpleNamespace(task="sr")
    deblur_model = SimpleNamespace(task="deblur")
    assert infer_task(("sr",), 25.0, sr_model) == "denoise"  # a noise level always means denoising
    assert infer_task(("denoise",), None, sr_model) == "sr"
    assert infer_task(("denoise",), None, deblur_model) == "denoise"  # not an eval task: the set decides
    assert infer_task(("sr", "denoise"), None, None) == "sr"  # several tasks and no hint
    assert infer_task(None, None, None) == "sr"


def test_sr_scale_from_the_options_or_the_model_name() -> None:
    plan = plan_evaluation("Set5", scale=2, model="mair-sr-x4")
    assert (plan.task, plan.scale, plan.sigma) == ("sr", 2, None)
    assert plan.dataset.name == "Set5" and plan.needs_model
    assert plan_evaluation("Set5", model="mair-sr-x4").scale == 4


def test_denoising_from_the_set_the_model_or_the_baseline() -> None:
    plan = plan_evaluation("CBSD68", sigma=15)
    assert (plan.task, plan.scale, plan.sigma) == ("denoise", None, 15)
    assert plan_evaluation("CBSD68", model="mair-dn-s25").sigma == 25  # the model's noise level
    assert plan_evaluation("Urban100", model="mair-dn-s50").task == "denoise"
    noisy = plan_evaluation("CBSD68", sigma=25, baseline="noisy")
    assert noisy.task == "denoise" and not noisy.needs_model


def test_final_scale_waits_for_the_network_only_when_needed() -> None:
    plan = plan_evaluation("Set5", weights="toy.pth")
    assert plan.scale is None
    assert plan.final_scale(SimpleNamespace(scale=3)) == 3
    with pytest.raises(UsageError, match="--scale"):
        plan.final_scale(None)
    # A scale from the options never reads the network's (it may be any module).
    assert plan_evaluation("Set5", scale=4, weights="toy.pth").final_scale(object()) == 4
    assert plan_evaluation("CBSD68", sigma=25).final_scale(None) == 1


@pytest.mark.parametrize(
    ("dataset", "options", "match"),
    [
        ("Set5", {}, "--scale"),  # SR, no scale and no model to take it from
        ("CBSD68", {"baseline": "noisy"}, "--sigma"),
        ("CBSD68", {"model": "restorecli-light-dn"}, "--sigma"),  # blind model: no noise level
        ("Set5", {"baseline": "bicubic", "model": "mair-sr-x4"}, "replaces the model"),
        ("Set5", {"baseline": "sharp", "scale": 4}, "expected one of"),
    ],
)
def test_plans_that_cannot_run_are_usage_errors(dataset: str, options: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        plan_evaluation(dataset, **options)


def test_plan_is_frozen() -> None:
    plan = plan_evaluation("Set5", scale=4, baseline="bicubic")
    assert isinstance(plan, EvalPlan)
    with pytest.raises(AttributeError):
        plan.task = "denoise"  # type: ignore[misc]


@pytest.mark.parametrize(("flags", "drawn"), [([], True), (["--json"], False), (["--quiet"], False)])
def test_weights_download_bar_follows_json_and_quiet(
    flags: list[str], drawn: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from restorecli import console
    from restorecli.cli import app, eval_cmd

    seen: list[object] = []

    def fake_load(*args: object, progress: bool = False, **options: object) -> None:
        seen.append(progress)
        raise UsageError("stopped by the test")

    monkeypatch.setattr(console, "_is_terminal", lambda stream: True)
    monkeypatch.setattr(eval_cmd, "load_model", fake_load)
    result = CliRunner().invoke(app, ["eval", "-d", "Set5", "-s", "4", "--weights", "toy.pth", *flags])
    assert isinstance(result.exception, UsageError) and seen == [drawn]
