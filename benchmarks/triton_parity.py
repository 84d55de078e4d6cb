"""The Triton selective scan against the float64 oracle, on one device: the errors per case.

    python -m benchmarks.triton_parity --device cuda            # on a GPU: the full-size cases
    TRITON_INTERPRET=1 python -m benchmarks.triton_parity --device cpu --small   # no GPU

Prints one JSON object: the backend that served, and for every case the max error relative to
the oracle's largest value, of the output, the last state and every gradient, with `passed`
against the targets (forward <= 1e-4, gradients <= 1e-3). The tests run it in a subprocess on
CPU under the interpreter (TRITON_INTERPRET must be set before Triton is imported, so never in
the test process itself); the benchmark's GPU section runs it on CUDA. `--small` shortens the
sequences and checkpoints every 8 positions so the interpreter stays fast and still crosses
chunk boundaries.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from drdemo.ops import (
    cpu_kernel,
    relative_error,
    scan_backend,
    selective_scan,
    selective_scan_2d,
    selective_scan_ref,
)

FORWARD_TOLERANCE = 1e-4
GRAD_TOLERANCE = 1e-3

CASES = {  # name: (groups, use_z, use_d, softplus_and_bias, return_last_state)
    "3-D B/C, bare": (None, False, False, False, True),
    "groups 1, everything": (1, True, True, True, True),
    "groups 3, D and bias": (3, False, True, True, False),
    "groups 3, z only": (3, True, False, False, True),
    "3-D B/C, everything": (None, True, True, True, False),
}


@contextlib.contextmanager
def forced_backend(name: str) -> Iterator[None]:
    """DRDEMO_SCAN_BACKEND=name for the duration (the dispatcher reads it on every call)."""
    saved = os.environ.get("DRDEMO_SCAN_BACKEND")
    os.environ["DRDEMO_SCAN_BACKEND"] = name
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("DRDEMO_SCAN_BACKEND", None)
        else:
            os.environ["DRDEMO_SCAN_BACKEND"] = saved


@contextlib.contextmanager
def _chunk(chunk: int | None) -> Iterator[None]:
    from drdemo.ops import triton_scan

    saved = triton_scan.CHUNK
    triton_scan.CHUNK = chunk or saved
    try:
        yield
    finally:
        triton_scan.CHUNK = saved


def _inputs(batch: int, dim: int, length: int, d_state: int, groups: int | None, device: str, seed: int = 0,
            dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    B_shape = (batch, d_state, length) if groups is None else (batch, groups, d_state, length)
    return dict(u=randn(batch, dim, length), delta=randn(batch, dim, length),
                A=-torch.exp(2 * torch.rand(dim, d_state, generator=g)).to(device), B=randn(*B_shape),
                C=randn(*B_shape), D=randn(dim).float(), z=randn(batch, dim, length),
                delta_bias=(0.5 * randn(dim)).float())


def _against_oracle(inputs: dict[str, torch.Tensor], softplus: bool, return_last_state: bool) -> dict[str, float]:
    names = list(inputs)
    fast_in = {n: t.clone().requires_grad_() for n, t in inputs.items()}
    ref_in = {n: t.detach().cpu().double().requires_grad_() for n, t in inputs.items()}
    with forced_backend("triton"):
        out = selective_scan(**fast_in, delta_softplus=softplus, return_last_state=return_last_state)
    ref = selective_scan_ref(**ref_in, delta_softplus=softplus, return_last_state=return_last_state)
    y, y_ref = (out[0], ref[0]) if return_last_state else (out, ref)
    if y.shape != y_ref.shape or y.dtype != inputs["u"].dtype:
        raise AssertionError(f"output {tuple(y.shape)} {y.dtype}, expected {tuple(y_ref.shape)} {inputs['u'].dtype}")
    errors = {"y": relative_error(y, y_ref)}
    if return_last_state:
        errors["last_state"] = relative_error(out[1], ref[1])
    weight = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    grads = torch.autograd.grad((y.double() * weight.to(y.device)).sum(), [fast_in[n] for n in names])
    grads_ref = torch.autograd.grad((y_ref * weight).sum(), [ref_in[n] for n in names])
    for name, got, want in zip(names, grads, grads_ref):
        if got.shape != want.shape or got.dtype != inputs[name].dtype:
            raise AssertionError(f"d{name}: {tuple(got.shape)} {got.dtype}, expected {tuple(want.shape)}")
        errors[f"d{name}"] = relative_error(got, want)
    return errors


def oracle_case(name: str, device: str, small: bool) -> dict[str, float]:
    """One of CASES: odd L that crosses checkpoint chunks, a partial channel block with 3 groups."""
    groups, use_z, use_d, softplus, last = CASES[name]
    dim, length, d_state = (6, 19, 4) if small else (48, 301, 16)
    inputs = _inputs(2, dim, length, d_state, groups, device)
    if not use_z:
        inputs.pop("z")
    if not use_d:
        inputs.pop("D")
    if not softplus:
        inputs.pop("delta_bias")
        inputs["delta"] = inputs["delta"].abs()
    return _against_oracle(inputs, softplus, last)


def long_case(device: str, small: bool) -> dict[str, float]:
    """The shipped checkpoint chunk (64) with a partial second chunk, and d_state 16."""
    inputs = _inputs(1, 4 if small else 64, 67 if small else 3136, 16, 2, device, seed=1)
    inputs.pop("z")
    return _against_oracle(inputs, softplus=True, return_last_state=True)


def half_case(device: str, dtype: torch.dtype) -> dict[str, float]:
    """float16/bfloat16 in: the output comes back rounded to that dtype, so only y is compared."""
    inputs = _inputs(1, 4, 11, 4, 2, device, seed=2, dtype=dtype)
    inputs.pop("z")
    leaves = {n: t.clone().requires_grad_() for n, t in inputs.items()}
    with forced_backend("triton"):
        y = selective_scan(**leaves, delta_softplus=True)
    if y.dtype != dtype:
        raise AssertionError(f"{dtype} in, {y.dtype} out")
    y_ref = selective_scan_ref(**{n: t.cpu().double() for n, t in inputs.items()}, delta_softplus=True)
    y.float().sum().backward()
    finite = all(t.grad is not None and t.grad.dtype == t.dtype and bool(torch.isfinite(t.grad.float()).all())
                 for t in leaves.values())
    return {"y": relative_error(y, y_ref), "grads_finite_in_input_dtype": float(finite)}


def scan_2d_case(device: str) -> dict[str, float]:
    """SS2D read by index on the Triton kernel vs the official layout's copies on the oracle."""
    g = torch.Generator().manual_seed(3)
    batch, height, width, dim, n = 1, 3, 5, 4, 4  # non-square: the four directions all differ
    grid = (batch, height, width)
    tensors = (torch.randn(*grid, dim, generator=g), torch.randn(*grid, 4, dim, generator=g),
               -torch.exp(torch.randn(4, dim, n, generator=g)), torch.randn(*grid, 4, n, generator=g),
               torch.randn(*grid, 4, n, generator=g), torch.randn(4, dim, generator=g),
               torch.randn(4, dim, generator=g))

    def run(backend: str, dtype: torch.dtype, on: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        leaves = [t.to(device=on, dtype=dtype, copy=True).requires_grad_() for t in tensors]
        with forced_backend(backend):
            y = selective_scan_2d(*leaves)
        y.backward(torch.ones_like(y))
        return y, [t.grad for t in leaves]

    y, grads = run("triton", torch.float32, device)
    y_ref, grads_ref = run("torch", torch.float64, "cpu")
    names = ("dx", "ddelta", "dA", "dB", "dC", "dD", "ddelta_bias")
    return {"y": relative_error(y, y_ref), **{k: relative_error(a, b) for k, a, b in zip(names, grads, grads_ref)}}


def softplus_case(device: str) -> dict[str, float]:
    """L = 1 and u = B = C = 1, so y is softplus(delta): each step to its own relative precision."""
    delta = torch.tensor([-30.0, -5.0, -1e-3, 0.0, 1e-3, 3.0, 19.9, 20.1, 40.0], device=device)[None, :, None]
    ones = torch.ones_like(delta)
    with forced_backend("triton"):
        y = selective_scan(ones, delta, -torch.ones(9, 1, device=device), ones[:, :1], ones[:, :1], delta_softplus=True)
    expected = F.softplus(delta.double())
    return {"y_elementwise": ((y.double() - expected).abs() / expected).max().item()}


def medmamba_case(device: str, small: bool) -> dict[str, float]:
    """A small MedMamba's logits through the Triton kernel on `device` vs the CPU path on CPU."""
    from drdemo.models.medmamba import MedMamba

    torch.manual_seed(0)
    dims = (8, 16, 32, 64) if small else (96, 192, 384, 768)
    model = MedMamba(num_classes=5, depths=(1, 1, 1, 1), dims=dims).eval()
    images = torch.randn(1 if small else 2, 3, 32 if small else 64, 32 if small else 64)
    with torch.no_grad():
        with forced_backend("auto" if cpu_kernel.load() is not None else "torch"):
            expected = model(images)
        with forced_backend("triton"):
            got = model.to(device)(images.to(device))
    return {"logits": relative_error(got, expected)}


def report(device: str, small: bool) -> dict:
    """Every case's errors on `device`, and whether each meets the targets."""
    with forced_backend("triton"):
        backend = scan_backend(device)
    cases: dict[str, dict[str, float]] = {}
    with _chunk(8 if small else None):
        for name in CASES:
            cases[name] = oracle_case(name, device, small)
        cases["scan 2d"] = scan_2d_case(device)
        for dtype in (torch.float16, torch.bfloat16):
            cases[str(dtype).removeprefix("torch.")] = half_case(device, dtype)
        cases["softplus"] = softplus_case(device)
        cases["medmamba"] = medmamba_case(device, small)
    cases["long, CHUNK 64"] = long_case(device, small)
    passed = {}
    for name, errors in cases.items():
        if name in ("float16", "bfloat16"):
            passed[name] = errors["y"] <= (2e-3 if name == "float16" else 1e-2) and bool(
                errors["grads_finite_in_input_dtype"])
        else:
            passed[name] = all(v <= (GRAD_TOLERANCE if k.startswith("d") else FORWARD_TOLERANCE)
                               for k, v in errors.items())
    return {"device": device, "backend": backend, "cases": cases, "passed": passed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.triton_parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="interpreter-sized shapes, checkpoints every 8 steps")
    args = parser.parse_args(argv)
    result = report(args.device, args.small)
    print(json.dumps(result))
    return 0 if all(result["passed"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
