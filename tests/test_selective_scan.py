"""Selective scan: every backend against an independent float64 recurrence, gradients,
backend resolution, the CPU kernel's build/fallback logic and the mamba_ssm import guard.

The CPU kernel is built (or loaded from the cache) once per session by the first test
that needs it. GPU tests are marked ``gpu`` and skip without CUDA.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from restorecli.errors import BackendUnavailableError
from restorecli.ops import available_backends, resolve_backend, scan_cpu, scan_cuda, scan_ref, selective_scan
from restorecli.ops.selective_scan import prepare_inputs


def make_inputs(
    batch: int,
    dim: int,
    length: int,
    n_state: int,
    groups: int | None,
    *,
    softplus: bool = True,
    bias: bool = True,
    skip: bool = True,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> dict:
    """Random inputs in Mamba's regime. ``groups=None`` gives the (batch, N, L) form of B/C."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    bc_shape = (batch, n_state, length) if groups is None else (batch, groups, n_state, length)
    # Without softplus delta is used as the step size directly, so keep it positive.
    delta = 0.5 * randn(batch, dim, length) if softplus else torch.rand(batch, dim, length, generator=gen, dtype=torch.float64) * 0.3
    dt0 = torch.exp(torch.empty(dim, dtype=torch.float64).uniform_(np.log(1e-3), np.log(0.1), generator=gen))
    log_a = torch.log(torch.arange(1, n_state + 1, dtype=torch.float64)).repeat(dim, 1) + 0.1 * randn(dim, n_state)
    values = {
        "u": randn(batch, dim, length),
        "delta": delta,
        "A": -torch.exp(log_a),
        "B": randn(*bc_shape),
        "C": randn(*bc_shape),
        "D": randn(dim) if skip else None,
        # softplus^-1(dt0) as in Mamba's init; without softplus a small positive shift.
        "delta_bias": (dt0 + torch.log(-torch.expm1(-dt0)) if softplus else dt0) if bias else None,
    }
    out = {k: None if v is None else v.to(dtype) for k, v in values.items()}
    out["delta_softplus"] = softplus
    return out


def oracle(inputs: dict) -> np.ndarray:
    """The recurrence in float64 NumPy, written independently of the library."""
    u, delta, a, b, c = (inputs[k].double().numpy() for k in ("u", "delta", "A", "B", "C"))
    batch, dim, length = u.shape
    if b.ndim == 3:
        b, c = b[:, None], c[:, None]
    per_group = dim // b.shape[1]
    b, c = np.repeat(b, per_group, axis=1), np.repeat(c, per_group, axis=1)  # (batch, dim, N, L)
    if inputs["delta_bias"] is not None:
        delta = delta + inputs["delta_bias"].double().numpy()[:, None]
    if inputs["delta_softplus"]:
        delta = np.where(delta > 20, delta, np.log1p(np.exp(np.minimum(delta, 20))))
    h = np.zeros((batch, dim, a.shape[1]))
    y = np.empty_like(u)
    for t in range(length):
        h = np.exp(delta[:, :, t, None] * a) * h + (delta[:, :, t] * u[:, :, t])[..., None] * b[..., t]
        y[:, :, t] = (h * c[..., t]).sum(-1)
    if inputs["D"] is not None:
        y += inputs["D"].double().numpy()[:, None] * u
    return y


def rel_err(got: torch.Tensor, want: np.ndarray | torch.Tensor) -> float:
    want = torch.as_tensor(want, dtype=torch.float64)
    return ((got.detach().double() - want).norm() / want.norm().clamp_min(1e-300)).item()


@pytest.fixture
def cpu_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the ``cpu`` backend with the compiled kernel or the forced torch fallback."""
    impl = request.param
    monkeypatch.setenv(scan_cpu.ENV_IMPL, impl)
    if impl == "compiled":
        status = scan_cpu.cpu_kernel_status()
        if status.implementation != "compiled":
            pytest.skip(f"compiled CPU kernel unavailable here: {status.reason}")
    return impl


# (batch, dim, L, N, G or None for the (batch, N, L) form, softplus, bias, D)
CASES = [
    (1, 4, 1, 1, 1, True, True, True),
    (2, 12, 17, 16, 4, True, True, True),
    (1, 6, 64, 1, 3, False, False, False),
    (2, 10, 65, 16, 2, True, False, True),
    (1, 20, 333, 5, None, True, True, False),
    (3, 36, 130, 16, 4, False, True, True),
    (1, 40, 100, 2, 1, True, True, True),
    (2, 64, 150, 16, 2, True, True, True),  # full 16-channel blocks, L not a multiple of 16
    (1, 8, 4999, 1, 4, True, True, True),
    (1, 8, 5000, 16, 4, True, True, True),
]
CASE_IDS = [f"b{c[0]}-d{c[1]}-L{c[2]}-N{c[3]}-G{c[4]}-sp{int(c[5])}-bias{int(c[6])}-D{int(c[7])}" for c in CASES]


def _case_inputs(case: tuple) -> dict:
    batch, dim, length, n_state, groups, softplus, bias, skip = case
    return make_inputs(batch, dim, length, n_state, groups, softplus=softplus, bias=bias, skip=skip)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("cpu_impl", ["compiled", "torch"], indirect=True)
def test_cpu_backend_matches_float64_recurrence(case: tuple, cpu_impl: str) -> None:
    inputs = _case_inputs(case)
    y = selective_scan(**inputs, backend="cpu")
    assert y.dtype == torch.float32 and y.shape == inputs["u"].shape
    assert rel_err(y, oracle(inputs)) <= 1e-5


@pytest.mark.parametrize("case", [c for c in CASES if c[2] < 1000], ids=[i for c, i in zip(CASES, CASE_IDS) if c[2] < 1000])
def test_ref_backend_matches_float64_recurrence(case: tuple) -> None:
    inputs = _case_inputs(case)
    y = selective_scan(**inputs, backend="ref")
    assert y.dtype == torch.float32
    assert rel_err(y, oracle(inputs)) <= 1e-5


def test_ref_backend_long_sequence() -> None:
    inputs = make_inputs(1, 8, 4000, 16, 4)
    assert rel_err(selective_scan(**inputs, backend="ref"), oracle(inputs)) <= 1e-5


@pytest.mark.parametrize("chunk", [1, 7, 64])
@pytest.mark.parametrize("n_state", [1, 16])
def test_torch_formulations_match(chunk: int, n_state: int) -> None:
    """Both pure-torch fast forms, whichever the CPU fallback picks (the GPU fallback uses
    the chunked one for every N)."""
    inputs = make_inputs(2, 12, 150, n_state, 4)
    x = prepare_inputs(**inputs)
    want = oracle(inputs)
    assert rel_err(scan_ref.scan_chunked(x, chunk=chunk), want) <= 1e-5
    assert rel_err(scan_ref.scan_stepwise(x), want) <= 1e-5


@pytest.mark.parametrize("backend", ["ref", "cpu"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_give_float32(backend: str, dtype: torch.dtype) -> None:
    inputs = make_inputs(1, 8, 40, 4, 2, dtype=dtype)
    y = selective_scan(**inputs, backend=backend)
    assert y.dtype == torch.float32
    # The math is float32 on the (rounded) inputs: compare with float64 on the same values.
    assert rel_err(y, oracle(inputs)) <= 1e-5


@pytest.mark.parametrize("backend", ["ref", "cpu"])
def test_float64_inputs_compute_in_float64(backend: str) -> None:
    inputs = make_inputs(1, 8, 50, 16, 4, dtype=torch.float64)
    y = selective_scan(**inputs, backend=backend)
    assert y.dtype == torch.float64
    assert rel_err(y, oracle(inputs)) <= 1e-12


@pytest.mark.parametrize("cpu_impl", ["compiled", "torch"], indirect=True)
def test_growing_modes_and_overflow(cpu_impl: str) -> None:
    """A > 0 is legal: growing states must match, and overflow must give inf like float32 torch."""
    inputs = make_inputs(1, 8, 60, 16, 2)
    inputs["A"] = inputs["A"].abs() * 0.05
    assert rel_err(selective_scan(**inputs, backend="cpu"), oracle(inputs)) <= 1e-5
    inputs["A"][0] = 5000.0  # dt * A >= 5 per step: the state of channel 0 overflows float32
    y = selective_scan(**inputs, backend="cpu")
    assert not torch.isfinite(y[0, 0]).all() and torch.isfinite(y[0, 1:]).all()


@pytest.mark.parametrize(("batch", "dim", "length"), [(1, 4, 0), (0, 4, 9), (1, 0, 9)])
def test_empty_inputs(batch: int, dim: int, length: int) -> None:
    inputs = make_inputs(batch, dim, length, 16, 1)
    for backend in ("ref", "cpu"):
        assert selective_scan(**inputs, backend=backend).shape == (batch, dim, length)


# --- gradients --------------------------------------------------------------------------

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def _grads(inputs: dict, backend: str, grad_out: torch.Tensor) -> list[torch.Tensor]:
    leaves = {k: inputs[k].detach().clone().requires_grad_() for k in GRAD_NAMES}
    y = selective_scan(**{**inputs, **leaves}, backend=backend)
    return list(torch.autograd.grad(y, [leaves[k] for k in GRAD_NAMES], grad_out))


def test_ref_gradients_gradcheck() -> None:
    inputs = make_inputs(2, 4, 6, 2, 2, dtype=torch.float64)
    leaves = [inputs[k].requires_grad_() for k in GRAD_NAMES]

    def fn(*args: torch.Tensor) -> torch.Tensor:
        return selective_scan(*args, delta_softplus=True, backend="ref")

    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("cpu_impl", ["compiled"], indirect=True)
@pytest.mark.parametrize(("n_state", "length", "fast"), [(2, 9, False), (1, 125, True), (3, 125, True), (16, 70, True)])
def test_compiled_gradients_gradcheck(cpu_impl: str, n_state: int, length: int, fast: bool) -> None:
    """float64 gradcheck through the kernel itself; the long cases span two backward tiles."""
    inputs = make_inputs(2, 4, length, n_state, 2, dtype=torch.float64, seed=1)
    leaves = [inputs[k].requires_grad_() for k in GRAD_NAMES]

    def fn(*args: torch.Tensor) -> torch.Tensor:
        return selective_scan(*args, delta_softplus=True, backend="cpu")

    assert torch.autograd.gradcheck(fn, leaves, fast_mode=fast)


@pytest.mark.parametrize("cpu_impl", ["compiled", "torch"], indirect=True)
@pytest.mark.parametrize(
    ("case", "dtype"),
    [
        ((2, 36, 300, 16, 4, True, True, True), torch.float32),
        ((1, 32, 100, 16, 2, True, True, True), torch.float32),  # full 16-channel blocks
        ((1, 20, 203, 1, None, True, True, True), torch.float32),
        ((2, 18, 130, 5, 3, False, True, True), torch.float64),
    ],
)
def test_cpu_gradients_match_ref(cpu_impl: str, case: tuple, dtype: torch.dtype) -> None:
    batch, dim, length, n_state, groups, softplus, bias, skip = case
    inputs = make_inputs(batch, dim, length, n_state, groups, softplus=softplus, bias=bias, skip=skip, dtype=dtype)
    grad_out = torch.randn(batch, dim, length, dtype=dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    ref64 = _grads({k: v.double() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}, "ref", grad_out.double())
    for name, got, want in zip(GRAD_NAMES, _grads(inputs, "cpu", grad_out), ref64):
        assert got.shape == inputs[name].shape, name
        assert rel_err(got, want) <= tol, name


@pytest.mark.parametrize("cpu_impl", ["compiled"], indirect=True)
def test_compiled_gradients_with_several_threads(cpu_impl: str) -> None:
    """dB/dC are summed from per-thread partials: the result must not depend on threads."""
    inputs = make_inputs(2, 40, 150, 16, 2)
    grad_out = torch.randn(2, 40, 150)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _grads(inputs, "cpu", grad_out)
        torch.set_num_threads(3)
        three = _grads(inputs, "cpu", grad_out)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, three):
        assert rel_err(b, a) <= 1e-6


def test_backward_thread_count_bounds_partial_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    small_u = torch.empty(1, 8, 16, device="meta")
    big_b = torch.empty(1, 4, 1 << 20, 16, device="meta")  # 256 MiB: dB + dC cost 512 MiB a thread
    assert scan_cpu._backward_threads(small_u, big_b) == 1
    assert scan_cpu._backward_threads(small_u, torch.empty(1, 4, 4096, 16, device="meta")) == 64
    big_u = torch.empty(1, 64, 1 << 22, device="meta")  # 1 GiB: the budget grows with the input
    assert scan_cpu._backward_threads(big_u, big_b) == 4


def test_no_grad_inputs_skip_checkpoints() -> None:
    inputs = make_inputs(1, 8, 70, 16, 2)
    with torch.no_grad():
        y = selective_scan(**inputs, backend="cpu")
    assert not y.requires_grad


# --- backend resolution -----------------------------------------------------------------


def test_available_backends_shape() -> None:
    backends = available_backends()
    assert set(backends) == {"ref", "cpu", "cuda", "triton"}
    assert backends["ref"] is None and backends["cpu"] is None
    assert (backends["cuda"] is None) == torch.cuda.is_available()


def test_resolution_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RESTORECLI_SCAN_BACKEND", raising=False)
    assert resolve_backend(None, torch.device("cpu")) == "cpu"
    assert resolve_backend("auto", "cpu") == "cpu"
    assert resolve_backend(None, "meta") == "ref"  # no dedicated backend for other devices
    monkeypatch.setenv("RESTORECLI_SCAN_BACKEND", "ref")
    assert resolve_backend(None, "cpu") == "ref"  # environment beats auto
    assert resolve_backend("cpu", "cpu") == "cpu"  # argument beats environment
    monkeypatch.setenv("RESTORECLI_SCAN_BACKEND", "")
    assert resolve_backend(None, "cpu") == "cpu"


def test_auto_picks_cuda_for_cuda_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RESTORECLI_SCAN_BACKEND", raising=False)
    assert resolve_backend(None, torch.device("cuda", 0)) == "cuda"


def test_unknown_backend_lists_valid_names(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BackendUnavailableError, match="valid: auto, ref, cpu, cuda, triton"):
        resolve_backend("tpu", "cpu")
    monkeypatch.setenv("RESTORECLI_SCAN_BACKEND", "mamba")
    with pytest.raises(BackendUnavailableError, match="RESTORECLI_SCAN_BACKEND"):
        resolve_backend(None, "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_explicit_cuda_without_gpu_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BackendUnavailableError, match=r"restorecli\[cuda\]|no CUDA device"):
        resolve_backend("cuda", "cpu")
    monkeypatch.setenv("RESTORECLI_SCAN_BACKEND", "cuda")
    with pytest.raises(BackendUnavailableError, match="not usable"):
        selective_scan(**make_inputs(1, 4, 5, 1, 1))


def test_backend_device_mismatch_raises() -> None:
    with pytest.raises(BackendUnavailableError, match="needs cpu tensors"):
        resolve_backend("cpu", "meta")


def test_shape_errors_name_the_argument() -> None:
    inputs = make_inputs(1, 8, 10, 4, 2)
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(**{**inputs, "A": inputs["A"][:4]})
    with pytest.raises(ValueError, match="does not divide"):
        selective_scan(**{**inputs, "B": torch.randn(1, 3, 4, 10), "C": torch.randn(1, 3, 4, 10)})
    with pytest.raises(ValueError, match="C must be"):
        selective_scan(**{**inputs, "C": torch.randn(1, 2, 4, 11)})
    with pytest.raises(ValueError, match="D must be"):
        selective_scan(**{**inputs, "D": torch.randn(7)})


# --- CPU kernel: status, fallback, build ------------------------------------------------


def test_cpu_status_forced_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(scan_cpu.ENV_IMPL, "torch")
    status = scan_cpu.cpu_kernel_status()
    assert status.implementation == "torch" and "RESTORECLI_CPU_SCAN" in status.reason
    monkeypatch.setenv(scan_cpu.ENV_IMPL, "fast")
    with pytest.raises(BackendUnavailableError, match="RESTORECLI_CPU_SCAN"):
        scan_cpu.cpu_kernel_status()


@pytest.fixture
def fresh_kernel_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Forget the loaded kernel (restored afterwards) and build into an empty cache."""
    monkeypatch.setattr(scan_cpu, "_kernel", None)
    monkeypatch.setenv(scan_cpu.ENV_EXTENSIONS_DIR, str(tmp_path))
    monkeypatch.delenv(scan_cpu.ENV_IMPL, raising=False)
    return tmp_path


def test_missing_compiler_falls_back(fresh_kernel_state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", str(fresh_kernel_state / "no-such-compiler"))
    status = scan_cpu.cpu_kernel_status()
    assert status.implementation == "torch" and "no C++ compiler" in status.reason
    inputs = make_inputs(1, 8, 30, 1, 2)
    assert rel_err(selective_scan(**inputs, backend="cpu"), oracle(inputs)) <= 1e-5
    monkeypatch.setenv(scan_cpu.ENV_IMPL, "compiled")
    with pytest.raises(BackendUnavailableError, match="unavailable"):
        selective_scan(**inputs, backend="cpu")


def _fake_compiler(folder: Path, body: str) -> Path:
    script = folder / "fake-cxx"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


@pytest.mark.skipif(sys.platform == "win32", reason="shell-script compiler stand-in")
def test_compile_error_falls_back(fresh_kernel_state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", str(_fake_compiler(fresh_kernel_state, 'echo "error: broken toolchain" >&2; exit 1\n')))
    status = scan_cpu.cpu_kernel_status()
    assert status.implementation == "torch"
    assert "compile failed" in status.reason and "broken toolchain" in status.reason
    assert not list(fresh_kernel_state.glob("*.so"))  # nothing half-written in the cache


@pytest.mark.skipif(sys.platform == "win32", reason="shell-script compiler stand-in")
def test_bad_library_falls_back(fresh_kernel_state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 'compiler' that writes garbage: loading fails, the program goes on."""
    body = 'for a; do last=$prev; prev=$a; done\n[ "$last" = "-o" ] && echo garbage > "$prev"\nexit 0\n'
    monkeypatch.setenv("CXX", str(_fake_compiler(fresh_kernel_state, body)))
    status = scan_cpu.cpu_kernel_status()
    assert status.implementation == "torch" and "OSError" in status.reason


@pytest.fixture
def untested_library(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The loaded kernel copied into an empty extensions folder: found there without a build,
    with no self-test verdict beside it."""
    status = scan_cpu.cpu_kernel_status()
    if status.implementation != "compiled" or status.library is None:
        pytest.skip("no compiled kernel here")
    copy = tmp_path / Path(status.library).name
    shutil.copy2(status.library, copy)
    monkeypatch.setattr(scan_cpu, "_kernel", None)
    monkeypatch.setenv(scan_cpu.ENV_EXTENSIONS_DIR, str(tmp_path))
    monkeypatch.delenv(scan_cpu.ENV_IMPL, raising=False)
    return copy


def _count_self_tests(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = scan_cpu._self_test

    def counted(lib: object) -> None:
        calls.append(1)
        real(lib)

    monkeypatch.setattr(scan_cpu, "_self_test", counted)
    return calls


def test_failed_self_test_falls_back(untested_library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(lib: object) -> None:
        raise RuntimeError("kernel self-test failed (simulated)")

    monkeypatch.setattr(scan_cpu, "_self_test", broken)
    status = scan_cpu.cpu_kernel_status()
    assert status.implementation == "torch" and "self-test failed" in status.reason
    assert sorted(p.name for p in untested_library.parent.iterdir()) == [untested_library.name]  # no verdict


def test_self_test_verdict_is_kept_per_library(untested_library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A passed self-test is not repeated by the next process for the same library file and
    torch; a changed verdict file (another library's bytes, torch or test) tests again."""
    calls = _count_self_tests(monkeypatch)
    assert scan_cpu.cpu_kernel_status().implementation == "compiled" and len(calls) == 1
    marker = untested_library.with_name(untested_library.name + ".verified")
    assert torch.__version__ in marker.read_text()
    monkeypatch.setattr(scan_cpu, "_kernel", None)  # the next process
    status = scan_cpu.cpu_kernel_status()
    assert status.implementation == "compiled" and len(calls) == 1 and "self-test passed before" in status.reason
    marker.write_text(marker.read_text().replace("sha256 ", "sha256 0"))
    monkeypatch.setattr(scan_cpu, "_kernel", None)
    assert scan_cpu.cpu_kernel_status().implementation == "compiled" and len(calls) == 2
    assert sorted(p.name for p in untested_library.parent.iterdir()) == [untested_library.name, marker.name]




def test_self_test_ignores_ambient_autocast(untested_library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first scan of a `--precision bf16` run loads the kernel under autocast; its self-test
    must still compare float32 with float32 (under autocast the reference ran in bfloat16 and
    a correct kernel was turned off for the whole process)."""
    calls = _count_self_tests(monkeypatch)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        status = scan_cpu.cpu_kernel_status()
    assert status.implementation == "compiled" and len(calls) == 1, status.reason


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file lock and shell-script compiler")
def test_concurrent_builds_compile_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two builders of the same library: the lock lets one compile, the other reuses it."""
    log = tmp_path / "calls.log"
    body = f'echo call >> "{log}"\nsleep 0.5\nfor a; do last=$prev; prev=$a; done\necho lib > "$prev"\n'
    compiler = str(_fake_compiler(tmp_path, body))
    target = tmp_path / "cache" / "lib.so"
    results: list[bool] = []

    def build() -> None:
        results.append(scan_cpu._ensure_built(target, "// source", compiler, []))

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, True]
    assert log.read_text().count("call") == 1
    assert target.read_text() == "lib\n"
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".build-")] == []


def test_portable_build_passes_self_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel built without -march=native (generic vector code instead of the AVX-512
    paths) must agree with the reference too: _self_test checks outputs and gradients."""
    if scan_cpu.cpu_kernel_status().implementation != "compiled":
        pytest.skip("no compiler here")
    source = (Path(scan_cpu.__file__).parent / "csrc" / "selective_scan_cpu.cpp").read_text()
    path, _ = scan_cpu.compile_library(source, "selective_scan_cpu", scan_cpu.compiler_flag_sets()[-1])
    scan_cpu._self_test(scan_cpu._open(path))


def test_extensions_dir_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(scan_cpu.ENV_EXTENSIONS_DIR, str(tmp_path / "ext"))
    assert scan_cpu.extensions_dir() == tmp_path / "ext"
    monkeypatch.delenv(scan_cpu.ENV_EXTENSIONS_DIR)
    assert scan_cpu.extensions_dir().name == "extensions"


# --- CUDA backend: import guard (CPU) and GPU parity -------------------------------------


@pytest.fixture
def fresh_mamba_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan_cuda, "_mamba", None)
    monkeypatch.delenv(scan_cuda.ENV_IMPL, raising=False)
    # these tests are about mamba_ssm's import guard: without mamba_ssm, no Triton in between
    monkeypatch.setattr(scan_cuda, "triton_unavailable_reason", lambda: "triton disabled by the test")


@pytest.mark.parametrize("error", [ImportError("No module named 'selective_scan_cuda'"), OSError("libcudart.so.12: cannot open shared object file"), RuntimeError("CUDA driver too old")])
def test_mamba_import_failures_are_recorded(fresh_mamba_state: None, monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    def failing() -> None:
        raise error

    monkeypatch.setattr(scan_cuda, "_import_selective_scan_fn", failing)
    status = scan_cuda.cuda_kernel_status()
    assert status.implementation == "torch"
    assert type(error).__name__ in status.reason and str(error) in status.reason


def test_mamba_missing_package_is_recorded(fresh_mamba_state: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # makes `import mamba_ssm...` raise ImportError
    status = scan_cuda.cuda_kernel_status()
    assert status.implementation == "torch" and "not importable" in status.reason


def test_mamba_function_is_called_with_prepared_inputs(fresh_mamba_state: None, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):  # noqa: N803, ANN001, ANN202
        calls.append({"B": B.shape, "z": z, "softplus": delta_softplus, "dtype": u.dtype})
        return torch.zeros_like(u)

    monkeypatch.setattr(scan_cuda, "_import_selective_scan_fn", lambda: fake_selective_scan_fn)
    assert scan_cuda.cuda_kernel_status().implementation == "mamba_ssm"
    inputs = make_inputs(1, 8, 12, 4, None, dtype=torch.bfloat16)
    y = scan_cuda.selective_scan_cuda(prepare_inputs(**inputs))
    assert y.dtype == torch.float32
    assert calls == [{"B": (1, 1, 4, 12), "z": None, "softplus": True, "dtype": torch.float32}]
    monkeypatch.setenv(scan_cuda.ENV_IMPL, "torch")  # forced fallback does not call mamba_ssm
    scan_cuda.selective_scan_cuda(prepare_inputs(**inputs))
    assert len(calls) == 1


def _cuda_inputs(case: tuple, dtype: torch.dtype = torch.float32) -> dict:
    inputs = _case_inputs(case)
    return {k: v.to("cuda", dtype if k in ("u", "delta", "B", "C") else torch.float32) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("impl", ["auto", "torch"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cuda_backend_matches_float64_recurrence(case: tuple, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(scan_cuda.ENV_IMPL, impl)
    inputs = _cuda_inputs(case)
    y = selective_scan(**inputs, backend="cuda")
    assert y.is_cuda and y.dtype == torch.float32
    assert rel_err(y.cpu(), oracle({k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})) <= 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("impl", ["auto", "torch"])
def test_cuda_gradients_match_ref(impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(scan_cuda.ENV_IMPL, impl)
    inputs = _cuda_inputs((2, 36, 300, 16, 4, True, True, True))
    grad_out = torch.randn(2, 36, 300, device="cuda")
    want = _grads({k: v.double() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}, "ref", grad_out.double())
    for name, got, ref in zip(GRAD_NAMES, _grads(inputs, "cuda", grad_out), want):
        assert rel_err(got.cpu(), ref.cpu()) <= 1e-4, name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_inputs_give_float32() -> None:
    inputs = _cuda_inputs((1, 16, 200, 16, 4, True, True, True), dtype=torch.bfloat16)
    y = selective_scan(**inputs, backend="cuda")
    assert y.dtype == torch.float32
    assert rel_err(y.cpu(), oracle({k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})) <= 1e-5


# --- `restore env` --------------------------------------------------------------------


def test_env_command_json() -> None:
    from typer.testing import CliRunner

    from restorecli.cli import app

    result = CliRunner().invoke(app, ["env", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["torch"]["version"] == torch.__version__
    assert set(report["scan"]["backends"]) == {"ref", "cpu", "cuda", "triton"}
    assert report["scan"]["backends"]["ref"]["usable"] is True
    assert report["scan"]["cpu_kernel"]["implementation"] in ("compiled", "torch")
    assert report["cache"]["extensions"] == str(scan_cpu.extensions_dir())
    share = report["platform"]["last_level_cache_per_cpu"]
    assert share is None or share > 0


def test_env_command_text(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from restorecli.cli import app

    monkeypatch.setenv(scan_cpu.ENV_IMPL, "torch")
    result = CliRunner().invoke(app, ["env"])
    assert result.exit_code == 0, result.output
    assert "torch fallback" in result.stdout and "RESTORECLI_CPU_SCAN=torch" in result.stdout
    assert "last-level cache" in result.stdout
    assert os.environ.get(scan_cpu.ENV_IMPL) == "torch"
