"""The fast selective scan against the sequential float64 oracle: values, gradients, dispatch.

Tolerance: the scan's contract is a max error <= 1e-4 relative to the oracle's largest
output; the fused kernel measures ~1e-7, so the tests hold it to 1e-5 to catch regressions.
"""

import ctypes
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from drdemo.ops import (
    cpu_kernel,
    cross_scan_orders,
    relative_error,
    scan_backend,
    selective_scan,
    selective_scan_2d,
    selective_scan_ref,
)

TOLERANCE = 1e-5
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(cpu_kernel.load() is None, reason=f"CPU kernel unavailable: "
                                f"{cpu_kernel.unavailable_reason()}")


def make_inputs(batch, dim, length, d_state, groups, dtype=torch.float32, seed=0, stress=False):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    if stress:  # the stress case: very negative A, large steps
        A = -torch.exp(6 * torch.rand(dim, d_state, generator=g, dtype=dtype))
        delta = F.softplus(2 * randn(batch, dim, length) + 1)
    else:
        A = -torch.exp(2 * torch.rand(dim, d_state, generator=g, dtype=dtype))
        delta = randn(batch, dim, length)
    B_shape = (batch, d_state, length) if groups is None else (batch, groups, d_state, length)
    return dict(u=randn(batch, dim, length), delta=delta, A=A, B=randn(*B_shape), C=randn(*B_shape),
                D=randn(dim), z=randn(batch, dim, length), delta_bias=0.5 * randn(dim))


def oracle(inputs, **options):
    return selective_scan_ref(**{k: v.double() if torch.is_tensor(v) else v for k, v in inputs.items()}, **options)


@pytest.mark.parametrize("groups", [None, 1, 4])
@pytest.mark.parametrize("use_z", [False, True])
@pytest.mark.parametrize("use_d", [False, True])
@pytest.mark.parametrize("softplus_and_bias", [False, True])
def test_forward_matches_oracle(groups, use_z, use_d, softplus_and_bias):
    # dim 20 with 4 groups: 5 channels per group, a partial vector block; L odd.
    inputs = make_inputs(batch=2, dim=20, length=37, d_state=16, groups=groups)
    if not use_z:
        inputs.pop("z")
    if not use_d:
        inputs.pop("D")
    if not softplus_and_bias:
        inputs.pop("delta_bias")
        inputs["delta"] = inputs["delta"].abs()
    y, last = selective_scan(**inputs, delta_softplus=softplus_and_bias, return_last_state=True)
    y_ref, last_ref = oracle(inputs, delta_softplus=softplus_and_bias, return_last_state=True)
    assert y.shape == (2, 20, 37) and y.dtype == torch.float32
    assert last.shape == (2, 20, 16)
    assert relative_error(y, y_ref) < TOLERANCE
    assert relative_error(last, last_ref) < TOLERANCE


@pytest.mark.parametrize("d_state", [1, 5, 16, 24])
def test_any_state_size(d_state):
    inputs = make_inputs(batch=1, dim=32, length=19, d_state=d_state, groups=2)
    y = selective_scan(**inputs, delta_softplus=True)
    assert relative_error(y, oracle(inputs, delta_softplus=True)) < TOLERANCE


def test_stress_case_at_stage1_length():
    """A = -exp(6U), delta = softplus(2 randn + 1), L = 56*56: no overflow, no lost precision."""
    inputs = make_inputs(batch=1, dim=48, length=56 * 56, d_state=16, groups=4, stress=True)
    inputs.pop("delta_bias")
    y = selective_scan(**inputs)
    assert torch.isfinite(y).all()
    assert relative_error(y, oracle(inputs)) < TOLERANCE


def test_long_memory_does_not_drift():
    """Tiny steps (decay close to 1) accumulate over all of L = 3136 without drifting."""
    inputs = make_inputs(batch=1, dim=16, length=3136, d_state=16, groups=1)
    inputs["delta"] = torch.full_like(inputs["delta"], 1e-3)
    inputs.pop("delta_bias")
    assert relative_error(selective_scan(**inputs), oracle(inputs)) < TOLERANCE


@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("softplus", [False, True])
def test_gradcheck_float64(groups, softplus):
    inputs = make_inputs(batch=2, dim=6, length=7, d_state=3, groups=groups, dtype=torch.float64, seed=1)
    if not softplus:
        inputs["delta"] = inputs["delta"].abs() + 0.1
    names = list(inputs)
    tensors = tuple(inputs[n].requires_grad_() for n in names)

    def fn(*args):
        return selective_scan(**dict(zip(names, args)), delta_softplus=softplus)

    assert torch.autograd.gradcheck(fn, tensors)


def test_float32_gradients_match_oracle():
    inputs = make_inputs(batch=2, dim=24, length=41, d_state=16, groups=4, seed=2)
    names = list(inputs)
    fast_in = {n: t.clone().requires_grad_() for n, t in inputs.items()}
    ref_in = {n: t.double().requires_grad_() for n, t in inputs.items()}
    y = selective_scan(**fast_in, delta_softplus=True)
    y_ref = selective_scan_ref(**ref_in, delta_softplus=True)
    weight = torch.randn_like(y_ref)
    fast_grads = torch.autograd.grad((y.double() * weight).sum(), [fast_in[n] for n in names])
    ref_grads = torch.autograd.grad((y_ref * weight).sum(), [ref_in[n] for n in names])
    for name, got, want in zip(names, fast_grads, ref_grads):
        assert got.shape == want.shape, name
        assert relative_error(got, want) < 1e-4, name


def test_scan_2d_kernel_matches_reference_layout(monkeypatch):
    """The index-reading kernel equals materialised flipped/transposed sequences (official layout)."""
    g = torch.Generator().manual_seed(3)
    batch, height, width, dim, n = 2, 5, 7, 12, 16  # non-square: the four directions all differ
    x = torch.randn(batch, height, width, dim, generator=g)
    delta = torch.randn(batch, height, width, 4, dim, generator=g)
    A = -torch.exp(torch.randn(4, dim, n, generator=g))
    B, C = torch.randn(batch, height, width, 4, n, generator=g), torch.randn(batch, height, width, 4, n, generator=g)
    D, bias = torch.randn(4, dim, generator=g), torch.randn(4, dim, generator=g)

    def run():
        leaves = [t.clone().requires_grad_() for t in (x, delta, A, B, C, D, bias)]
        y = selective_scan_2d(*leaves)
        y.backward(torch.ones_like(y))
        return y, [t.grad for t in leaves]

    y_fast, grads_fast = run()
    monkeypatch.setenv("DRDEMO_SCAN_BACKEND", "torch")
    assert scan_backend("cpu") == "torch"
    y_ref, grads_ref = run()
    assert relative_error(y_fast, y_ref) < TOLERANCE
    for got, want in zip(grads_fast, grads_ref):
        assert relative_error(got, want) < 1e-4


def test_cross_scan_orders():
    orders = cross_scan_orders(2, 3)
    assert orders.tolist() == [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]
    assert orders.dtype == torch.int32


def test_backend_override(monkeypatch):
    assert scan_backend("cpu") == "cpu"
    monkeypatch.setenv("DRDEMO_SCAN_BACKEND", "torch")
    assert scan_backend("cpu") == "torch"
    monkeypatch.setenv("DRDEMO_SCAN_BACKEND", "fastest")
    with pytest.raises(ValueError, match="DRDEMO_SCAN_BACKEND"):
        scan_backend("cpu")


def test_a_caller_names_the_backend_over_the_environments_default(monkeypatch):
    monkeypatch.setenv("DRDEMO_SCAN_BACKEND", "torch")
    assert scan_backend("cpu", "cpu") == "cpu" and scan_backend("cpu") == "torch"
    monkeypatch.delenv("DRDEMO_SCAN_BACKEND")
    assert scan_backend("cpu", "torch") == "torch" and scan_backend("cpu") == "cpu"
    with pytest.raises(ValueError, match="scan backend 'fastest'"):
        scan_backend("cpu", "fastest")
    inputs = make_inputs(batch=1, dim=4, length=6, d_state=3, groups=1)
    fast, reference = selective_scan(**inputs, backend="cpu"), selective_scan(**inputs, backend="torch")
    assert relative_error(fast, reference) < TOLERANCE


def test_mismatched_groups_are_refused():
    inputs = make_inputs(batch=1, dim=8, length=5, d_state=4, groups=2)
    inputs["C"] = inputs["C"][:, :1]
    with pytest.raises(ValueError, match="same number of groups"):
        selective_scan(**inputs)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or shutil.which("objdump") is None,
                    reason="needs x86-64 and objdump")
def test_kernel_is_vectorised():
    """The hot loop must use 256/512-bit registers, not scalar code (check the assembly)."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("CPU without AVX2")
    disassembly = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(cpu_kernel.library_path())],
                                 capture_output=True, text=True, check=True).stdout
    vector_fmas = [line for line in disassembly.splitlines() if "vfmadd" in line and ("ymm" in line or "zmm" in line)]
    assert len(vector_fmas) > 50


def test_pure_pytorch_fallback_without_compiler(tmp_path):
    """No compiler and no cached kernel: the scan still works, on the PyTorch path."""
    code = (
        "import torch\n"
        "from drdemo.ops import scan_backend, selective_scan, selective_scan_ref, cpu_kernel\n"
        "assert scan_backend('cpu') == 'torch', scan_backend('cpu')\n"
        "assert 'compiler' in cpu_kernel.unavailable_reason() or 'failed' in cpu_kernel.unavailable_reason()\n"
        "u = torch.randn(1, 4, 9); A = -torch.rand(4, 3); B = torch.randn(1, 3, 9)\n"
        "assert torch.equal(selective_scan(u, u.abs(), A, B, B), selective_scan_ref(u, u.abs(), A, B, B))\n"
        "print('fallback ok')\n"
    )
    env = {**os.environ, "DRDEMO_CACHE": str(tmp_path), "CXX": str(tmp_path / "no-such-compiler"),
           "PATH": "/nonexistent", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "fallback ok" in result.stdout


def test_the_kernel_s_parameter_struct_is_the_size_of_its_ctypes_mirror():
    size_of = cpu_kernel.load().scan_params_size
    size_of.restype = ctypes.c_int64
    assert size_of() == ctypes.sizeof(cpu_kernel.ScanParams)


def test_a_ctypes_mirror_that_disagrees_with_the_kernel_refuses_it(monkeypatch):
    """A field added on one side only would make the kernel read pointers from the wrong offsets:
    load() refuses the library with the reason, and the scan falls back to PyTorch."""

    class Longer(ctypes.Structure):
        _fields_ = [*cpu_kernel.ScanParams._fields_, ("extra", ctypes.c_int64)]

    monkeypatch.setattr(cpu_kernel, "ScanParams", Longer)
    monkeypatch.setattr(cpu_kernel, "_library", None)
    monkeypatch.setattr(cpu_kernel, "_load_error", None)
    assert cpu_kernel.load() is None
    reason = cpu_kernel.unavailable_reason()
    assert f"is {ctypes.sizeof(Longer)}" in reason and "ScanParams" in reason and "make their fields agree" in reason
