"""The Triton selective scan: against the float64 oracle in Triton's interpreter, its dispatch,
and its compilation for real GPU targets (no GPU needed for any of it).

Triton decides between compiling and interpreting when a function is wrapped by `triton.jit`,
its own language helpers included at `import triton`, so TRITON_INTERPRET=1 cannot be switched
on inside this test process: the interpreter checks run once, in a subprocess, through
benchmarks.triton_parity (small shapes, checkpoints every 8 positions so short sequences cross
chunk boundaries), and each case is asserted here. Tolerances are the stated targets: forward
max error <= 1e-4 and gradients <= 1e-3, relative to the oracle's largest value.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

from benchmarks import triton_parity  # noqa: E402
from drdemo.ops import cpu_kernel, scan, scan_backend, triton_scan  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parity() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("DRDEMO_SCAN_BACKEND", None)
    result = subprocess.run([sys.executable, "-m", "benchmarks.triton_parity", "--device", "cpu", "--small"],
                            env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.stdout.strip(), result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_interpreter_serves_forced_triton(parity):
    assert parity["backend"] == "triton"


@pytest.mark.parametrize("case", [*triton_parity.CASES, "scan 2d", "long, CHUNK 64"])
def test_forward_and_gradients_match_oracle(parity, case):
    errors = parity["cases"][case]
    assert errors["y"] <= triton_parity.FORWARD_TOLERANCE
    assert errors.get("last_state", 0.0) <= triton_parity.FORWARD_TOLERANCE
    grads = {k: v for k, v in errors.items() if k.startswith("d")}
    assert grads and max(grads.values()) <= triton_parity.GRAD_TOLERANCE, grads


@pytest.mark.parametrize("dtype, tolerance", [("float16", 2e-3), ("bfloat16", 1e-2)])
def test_half_precision_inputs(parity, dtype, tolerance):
    """Output rounded to the input dtype (hence the looser bound); gradients finite, in that dtype."""
    assert parity["cases"][dtype]["y"] <= tolerance
    assert parity["cases"][dtype]["grads_finite_in_input_dtype"] == 1.0


def test_softplus_keeps_relative_precision(parity):
    assert parity["cases"]["softplus"]["y_elementwise"] <= 1e-6


def test_tiny_medmamba_equals_cpu_path(parity):
    assert parity["cases"]["medmamba"]["logits"] <= 1e-4
    assert all(parity["passed"].values()), parity["passed"]


def test_forced_triton_without_interpreter_is_refused_on_cpu(monkeypatch):
    monkeypatch.setenv("DRDEMO_SCAN_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        scan_backend("cpu")


def test_cpu_dispatch_is_unchanged(monkeypatch):
    monkeypatch.delenv("DRDEMO_SCAN_BACKEND", raising=False)
    assert scan_backend("cpu") == ("cpu" if cpu_kernel.load() is not None else "torch")


def test_cuda_dispatch_order(monkeypatch):
    """CUDA tensors: mamba_ssm when installed, else Triton when it can run, else the reference."""
    monkeypatch.delenv("DRDEMO_SCAN_BACKEND", raising=False)
    monkeypatch.setattr(scan, "_mamba_ssm_scan", lambda: object())
    monkeypatch.setattr(scan, "_triton_unavailable", lambda device: None)
    assert scan_backend("cuda") == "cuda"
    monkeypatch.setattr(scan, "_mamba_ssm_scan", lambda: None)
    assert scan_backend("cuda") == "triton"
    monkeypatch.setattr(scan, "_triton_unavailable", lambda device: "no GPU here")
    assert scan_backend("cuda") == "torch"
    monkeypatch.setenv("DRDEMO_SCAN_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="no GPU here"):
        scan_backend("cuda")
    monkeypatch.setattr(scan, "_triton_unavailable", lambda device: None)
    assert scan_backend("cuda") == "triton"
    monkeypatch.setenv("DRDEMO_SCAN_BACKEND", "torch")
    assert scan_backend("cuda") == "torch"


def test_unavailable_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert triton_scan.unavailable_reason(torch.device("cuda")) == "CUDA is not available"


def test_refused_where_zerogpu_emulates_cuda(monkeypatch):
    """ZeroGPU's main process patches is_available with a function of the spaces package."""
    def emulated() -> bool:
        return True

    emulated.__module__ = "spaces.zero.torch.patching"
    monkeypatch.setattr(torch.cuda, "is_available", emulated)
    assert triton_scan.cuda_emulated()
    assert "ZeroGPU" in triton_scan.unavailable_reason(torch.device("cuda"))


@pytest.mark.parametrize("capability", [70, 75, 90])
def test_kernels_compile_for_gpu_targets(capability):
    """Triton's real compiler (to PTX and cubin; no GPU needed) accepts both kernels: it catches
    what the interpreter lets through, such as type errors in loop-carried values."""
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as exc:
        pytest.skip(f"this Triton has no ASTSource/GPUTarget: {exc}")
    flags = dict(BLOCK_D=32, BLOCK_N=16, CHUNK=64, HAS_D=True, HAS_BIAS=True, SOFTPLUS=True, HAS_ORDER=True)
    for kernel, extra in ((triton_scan._forward_kernel, dict(STORE_LAST=True, STORE_CKPT=True)),
                          (triton_scan._backward_kernel, {})):
        constexprs = {**flags, **extra}
        names = kernel.arg_names
        signature = {p: "constexpr" if p in constexprs else "*i32" if p == "order_ptr" else
                     "*fp32" if p.endswith("_ptr") else "i32" for p in names}
        source = ASTSource(kernel, signature, constexprs={(names.index(k),): v for k, v in constexprs.items()})
        compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options={"num_warps": 4})
        assert "cubin" in compiled.asm
