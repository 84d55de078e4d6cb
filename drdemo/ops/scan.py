"""The selective scan (Mamba's S6 recurrence): a sequential oracle, a fused CPU kernel, and
mamba_ssm's CUDA kernel, behind one signature and one dispatcher.

`selective_scan` has the semantics and shapes of `mamba_ssm.selective_scan_fn`:

    u, delta: (batch, dim, L)        A: (dim, N)          D, delta_bias: (dim,)
    B, C: (batch, N, L) or (batch, groups, N, L); channel c uses group c // (dim // groups)
    z: (batch, dim, L)               returns y (batch, dim, L) [, last_state (batch, dim, N)]

    delta <- softplus(delta + delta_bias)   (each part optional)
    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t;  y_t = C_t . h_t + D * u_t
    y <- y * silu(z)

`selective_scan_2d` is the four-direction scan of MedMamba's SS2D, taking the feature map
in its natural channels-last layout; the CPU kernel reads the four directions by index.

Backends, chosen per call by device and availability, or named by the caller's `backend=`
(auto|cpu|torch|triton; where a caller names none, the DRDEMO_SCAN_BACKEND environment variable,
read in `default_backend` only, sets the process's default): "cuda" (mamba_ssm, CUDA tensors only),
"triton" (the Triton kernels of drdemo.ops.triton_scan: CUDA tensors when mamba_ssm is not installed,
or any device when forced; CPU tensors only under TRITON_INTERPRET=1), "cpu" (the fused kernel, CPU
tensors), "torch" (the sequential reference, anywhere). CUDA tensors take mamba_ssm, else Triton, else
the reference.
"""

from __future__ import annotations

import functools
import logging
import os

import torch
import torch.nn.functional as F

from drdemo.ops import cpu_kernel

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "torch", "triton")


def selective_scan_ref(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                       C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                       delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                       return_last_state: bool = False):
    """Sequential reference: one step per position, in float32 or wider (float64 in, float64 out).

    The oracle the fast paths are tested against, and the portable fallback. B and C may
    also be constant, of shape (dim, N).
    """
    dtype_in = u.dtype
    compute = torch.promote_types(dtype_in, torch.float32)
    u, delta, A = u.to(compute), delta.to(compute), A.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    dim = u.shape[1]

    def per_channel(M: torch.Tensor) -> torch.Tensor:
        M = M.to(compute)
        if M.dim() == 3:
            return M[:, None]  # (batch, 1, N, L): one group shared by all channels
        if M.dim() == 4:
            return M.repeat_interleave(dim // M.shape[1], dim=1)  # (batch, dim, N, L)
        return M  # (dim, N): constant over the sequence

    Bc, Cc = per_channel(B), per_channel(C)
    h = u.new_zeros(u.shape[0], dim, A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        step = delta[:, :, t]
        Bt = Bc[..., t] if Bc.dim() == 4 else Bc
        Ct = Cc[..., t] if Cc.dim() == 4 else Cc
        h = torch.exp(step[..., None] * A) * h + (step * u[:, :, t])[..., None] * Bt
        ys.append((h * Ct).sum(-1))
    y = torch.stack(ys, dim=2) if ys else u.new_zeros(u.shape)
    if D is not None:
        y = y + u * D.to(compute)[:, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    y = y.to(dtype_in)
    return (y, h) if return_last_state else y


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max |actual - expected| over the largest |expected|: the measure every fast scan's contract
    with the oracle is stated in (<= 1e-4 forward), shared by the tests and the benchmarks."""
    expected = expected.double().cpu()
    return ((actual.double().cpu() - expected).abs().max() / expected.abs().max()).item()


class _PositionalScan(torch.autograd.Function):
    """Autograd wrapper of the fused CPU kernel, on the kernel's positional layout.

    u (batch, L, Gu, Dg) with Gu = 1 (one input shared by every group) or G; delta
    (batch, L, G, Dg), raw: the kernel adds delta_bias (G, Dg) and applies softplus when
    asked; A (G, N, Dg); B, C (batch, L, G, N), any strides; D (G, Dg) or None; order (G, L)
    int32 or None. Output (batch, L, Dg) summed over groups when sum_groups, else
    (batch, L, G, Dg); plus last_state (batch, G, Dg, N) or an empty tensor.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, order, softplus: bool, sum_groups: bool,
                return_last_state: bool):
        u, delta = _unit_channel_stride(u), _unit_channel_stride(delta)
        batch, length, groups, channels = delta.shape
        y = u.new_empty((batch, length, channels) if sum_groups else (batch, length, groups, channels))
        last_state = (u.new_empty(batch, groups, channels, A.shape[1]) if return_last_state
                      else u.new_empty(0))
        params = _params(u, delta, A, B, C, D, delta_bias, order, softplus)
        params.y = y.data_ptr()
        params.y_sb, params.y_sl = y.stride(0), y.stride(1)
        params.y_sg = 0 if sum_groups else y.stride(2)
        params.accumulate = int(sum_groups)
        params.last_state = last_state.data_ptr() if return_last_state else None
        cpu_kernel.run("forward", params, u.dtype)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, order)
        ctx.sum_groups, ctx.softplus = sum_groups, softplus
        ctx.mark_non_differentiable(last_state)
        return y, last_state

    @staticmethod
    def backward(ctx, grad_y, _grad_last_state):
        u, delta, A, B, C, D, delta_bias, order = ctx.saved_tensors
        batch, length, groups, channels = delta.shape
        grad_y = _unit_channel_stride(grad_y)
        params = _params(u, delta, A, B, C, D, delta_bias, order, ctx.softplus)
        params.dy = grad_y.data_ptr()
        params.dy_sb, params.dy_sl = grad_y.stride(0), grad_y.stride(1)
        params.dy_sg = 0 if ctx.sum_groups else grad_y.stride(2)
        du = delta.new_empty(batch, length, groups, channels)
        ddelta = torch.empty_like(du)
        dA = A.new_empty(batch, groups, A.shape[1], channels)
        dD = A.new_empty(batch, groups, channels) if D is not None else None
        dB = B.new_zeros(batch, groups, length, B.shape[3])
        dC = C.new_zeros(batch, groups, length, C.shape[3])
        params.du, params.du_sb, params.du_sl, params.du_sg = du.data_ptr(), *du.stride()[:3]
        params.ddelta, params.dd_sb, params.dd_sl, params.dd_sg = ddelta.data_ptr(), *ddelta.stride()[:3]
        params.dA, params.dB, params.dC = dA.data_ptr(), dB.data_ptr(), dC.data_ptr()
        params.dD = dD.data_ptr() if dD is not None else None
        cpu_kernel.run("backward", params, u.dtype)
        if u.shape[2] != groups:
            du = du.sum(2, keepdim=True)
        return (du, ddelta, dA.sum(0), dB.transpose(1, 2), dC.transpose(1, 2),
                dD.sum(0) if dD is not None else None,
                ddelta.sum((0, 1)) if delta_bias is not None else None, None, None, None, None)


def _unit_channel_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _params(u, delta, A, B, C, D, delta_bias, order, softplus) -> cpu_kernel.ScanParams:
    batch, length, groups, channels = delta.shape
    p = cpu_kernel.ScanParams()
    p.batch, p.groups, p.channels, p.length, p.dstate = batch, groups, channels, length, A.shape[1]
    p.u, p.u_sb, p.u_sl = u.data_ptr(), u.stride(0), u.stride(1)
    p.u_sg = u.stride(2) if u.shape[2] == groups else 0
    p.delta, p.d_sb, p.d_sl, p.d_sg = delta.data_ptr(), *delta.stride()[:3]
    p.delta_bias = delta_bias.data_ptr() if delta_bias is not None else None
    p.delta_softplus = int(softplus)
    p.A = A.data_ptr()
    p.Bm, p.b_sb, p.b_sl, p.b_sg, p.b_sn = B.data_ptr(), *B.stride()
    p.Cm, p.c_sb, p.c_sl, p.c_sg, p.c_sn = C.data_ptr(), *C.stride()
    p.Dskip = D.data_ptr() if D is not None else None
    if order is not None:
        p.order, p.order_sg = order.data_ptr(), order.stride(0)
    return p


def _positional_scan(u, delta, A, B, C, D=None, delta_bias=None, order=None, softplus=False,
                     sum_groups=False, return_last_state=False):
    """Cast to the kernel's dtype (float32, or float64 if any input is); small tensors contiguous."""
    dtype = torch.float64 if torch.float64 in (u.dtype, delta.dtype, A.dtype) else torch.float32

    def small(t):
        return t.to(dtype).contiguous() if t is not None else None

    return _PositionalScan.apply(u.to(dtype), delta.to(dtype), small(A), B.to(dtype), C.to(dtype), small(D),
                                 small(delta_bias), order, softplus, sum_groups, return_last_state)


def default_backend() -> str:
    """The backend a call that names none asks for: DRDEMO_SCAN_BACKEND, else 'auto'."""
    name = os.environ.get("DRDEMO_SCAN_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"DRDEMO_SCAN_BACKEND={name!r}: expected one of {', '.join(BACKENDS)}")
    return name


def _requested_backend(backend: str | None) -> str:
    if backend is None:
        return default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"scan backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    return backend


@functools.lru_cache(maxsize=1)
def _mamba_ssm_scan():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError as exc:
        log.info("mamba_ssm is not installed (%s); CUDA tensors take the Triton kernel where it can run", exc)
        return None
    return selective_scan_fn


@functools.lru_cache(maxsize=1)
def _triton_module():
    """drdemo.ops.triton_scan, or None with the reason when Triton cannot be imported."""
    try:
        from drdemo.ops import triton_scan
    except ImportError as exc:
        return None, f"Triton is not installed ({exc})"
    return triton_scan, None


def _triton_unavailable(device: torch.device) -> str | None:
    module, reason = _triton_module()
    return reason if module is None else module.unavailable_reason(device)


@functools.lru_cache(maxsize=8)
def _warn_slow_cuda(reason: str) -> None:
    log.warning("CUDA tensors use the slow sequential PyTorch scan: mamba_ssm is not installed and the "
                "Triton kernel cannot run (%s)", reason)


def scan_backend(device: torch.device | str, backend: str | None = None) -> str:
    """Which implementation serves tensors on `device` when `backend` (default: `default_backend()`) is asked
    for: 'cuda', 'triton', 'cpu' or 'torch'."""
    device = torch.device(device)
    requested = _requested_backend(backend)
    if requested == "triton":
        reason = _triton_unavailable(device)
        if reason is not None:
            raise RuntimeError(f"scan backend 'triton' asked for, but the Triton kernel cannot run on {device.type} "
                               f"tensors: {reason}")
        return "triton"
    if device.type == "cuda":
        if requested == "torch":
            return "torch"
        if _mamba_ssm_scan() is not None:
            return "cuda"
        reason = _triton_unavailable(device)
        if reason is None:
            return "triton"
        _warn_slow_cuda(reason)
        return "torch"
    if device.type == "cpu" and requested in ("auto", "cpu"):
        if cpu_kernel.load() is not None:
            return "cpu"
        if requested == "cpu":
            raise RuntimeError(f"scan backend 'cpu' asked for, but the CPU kernel is unavailable: "
                               f"{cpu_kernel.unavailable_reason()}")
    return "torch"


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, backend: str | None = None):
    """mamba_ssm.selective_scan_fn semantics on any device; `backend` as in `scan_backend`; see the module
    docstring.

    The CPU and Triton kernels serve variable (per-position) B and C; constant (dim, N) B or C
    and complex A take the reference path, and so do float64 inputs on the Triton backend (its
    state is float32).
    """
    backend = scan_backend(u.device, backend)
    if backend == "cuda":
        return _mamba_ssm_scan()(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if (backend == "torch" or B.dim() == 2 or C.dim() == 2 or A.is_complex() or u.shape[2] == 0
            or (backend == "triton" and _any_float64(u, delta, A))):
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    batch, dim, length = u.shape
    B4 = B[:, None] if B.dim() == 3 else B
    C4 = C[:, None] if C.dim() == 3 else C
    if B4.shape[1] != C4.shape[1] or dim % B4.shape[1]:
        raise ValueError(f"B and C must have the same number of groups dividing dim={dim}; "
                         f"got B {tuple(B.shape)}, C {tuple(C.shape)}")
    groups, channels = B4.shape[1], dim // B4.shape[1]
    if backend == "triton":
        return _triton_selective_scan(u, delta, A, B4, C4, D, z, delta_bias, delta_softplus, return_last_state,
                                      groups)
    compute = torch.promote_types(u.dtype, torch.float32)

    def positional(t: torch.Tensor) -> torch.Tensor:  # (batch, dim, L) -> (batch, L, G, Dg)
        return t.to(compute).transpose(1, 2).contiguous().view(batch, length, groups, dim // groups)

    y, last_state = _positional_scan(
        positional(u), positional(delta), A.view(groups, channels, -1).transpose(1, 2),
        B4.permute(0, 3, 1, 2), C4.permute(0, 3, 1, 2),
        D.view(groups, channels) if D is not None else None,
        delta_bias.view(groups, channels) if delta_bias is not None else None,
        softplus=delta_softplus, return_last_state=return_last_state)
    y = y.view(batch, length, dim).transpose(1, 2)
    if z is not None:
        y = y * F.silu(z.to(compute))
    y = y.to(u.dtype).contiguous()
    if return_last_state:
        return y, last_state.view(batch, dim, -1)
    return y


def _any_float64(*tensors: torch.Tensor) -> bool:
    return any(t.dtype == torch.float64 for t in tensors)


def _triton_selective_scan(u, delta, A, B4, C4, D, z, delta_bias, delta_softplus, return_last_state, groups):
    """`selective_scan` on the Triton kernels, reading (batch, dim, L) in place."""
    batch, dim, length = u.shape
    channels = dim // groups

    def per_group(t: torch.Tensor | None) -> torch.Tensor | None:
        return t.reshape(groups, channels) if t is not None else None

    y, last_state = _triton_module()[0].TritonScan.apply(
        u.unflatten(1, (groups, channels)), delta.unflatten(1, (groups, channels)),
        A.reshape(groups, channels, -1), B4, C4, per_group(D), per_group(delta_bias), None,
        delta_softplus, return_last_state)
    y = y.flatten(1, 2)
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(u.dtype).contiguous()
    if return_last_state:
        return y, last_state.view(batch, dim, -1)
    return y


@functools.lru_cache(maxsize=32)
def cross_scan_orders(height: int, width: int, device: str = "cpu") -> torch.Tensor:
    """(4, H*W) int32 positions visited by SS2D's four directions, as step -> position.

    0: row-major, 1: column-major, 2: row-major reversed, 3: column-major reversed.
    Cached, so built as a normal tensor even when first asked for under inference_mode (an
    inference tensor could not be saved for a later backward pass).
    """
    with torch.inference_mode(False):
        grid = torch.arange(height * width, dtype=torch.int32).view(height, width)
        rows, cols = grid.flatten(), grid.t().flatten()
        return torch.stack([rows, cols, rows.flip(0), cols.flip(0)]).contiguous().to(device)


def selective_scan_2d(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                      C: torch.Tensor, D: torch.Tensor, delta_bias: torch.Tensor,
                      backend: str | None = None) -> torch.Tensor:
    """SS2D's four-direction scan, summed over directions, in channels-last layout; `backend` as in
    `scan_backend`.

    x: (batch, H, W, d); delta: (batch, H, W, 4, d) before bias and softplus; A: (4, d, N)
    (negative); B, C: (batch, H, W, 4, N), any strides; D, delta_bias: (4, d).
    Returns (batch, H, W, d) = sum over directions k of scan_k read back at each position.
    """
    batch, height, width, dim = x.shape
    K, N, length = delta.shape[3], A.shape[-1], height * width
    chosen = scan_backend(x.device, backend)
    if chosen == "triton" and not _any_float64(x, delta, A):
        # The kernel reads the channels-last map in place: (batch, K, d, L) views with strides.
        y, _ = _triton_module()[0].TritonScan.apply(
            x.reshape(batch, length, 1, dim).permute(0, 2, 3, 1).expand(batch, K, dim, length),
            delta.reshape(batch, length, K, dim).permute(0, 2, 3, 1), A,
            B.reshape(batch, length, K, N).permute(0, 2, 3, 1), C.reshape(batch, length, K, N).permute(0, 2, 3, 1),
            D, delta_bias, cross_scan_orders(height, width, str(x.device)), True, False)
        return y.sum(1).transpose(1, 2).reshape(batch, height, width, dim).to(x.dtype)
    if chosen == "cpu":
        y, _ = _positional_scan(
            x.reshape(batch, length, 1, dim), delta.reshape(batch, length, K, dim), A.transpose(1, 2),
            B.reshape(batch, length, K, N), C.reshape(batch, length, K, N), D, delta_bias,
            order=cross_scan_orders(height, width), softplus=True, sum_groups=True)
        return y.view(batch, height, width, dim)

    # Reference layout (official MedMamba): materialise the four sequences, scan, read back.
    compute = torch.promote_types(x.dtype, torch.float32)
    order = cross_scan_orders(height, width, str(x.device)).long()
    direction = torch.arange(K, device=x.device)[:, None]
    xs = x.reshape(batch, length, dim)[:, order].transpose(2, 3)                # (batch, K, d, L)
    ds = delta.reshape(batch, length, K, dim)[:, order, direction].transpose(2, 3)
    Bs = B.reshape(batch, length, K, N)[:, order, direction].transpose(2, 3)    # (batch, K, N, L)
    Cs = C.reshape(batch, length, K, N)[:, order, direction].transpose(2, 3)
    ys = selective_scan(
        xs.reshape(batch, K * dim, length).to(compute), ds.reshape(batch, K * dim, length).to(compute),
        A.reshape(K * dim, N).to(compute), Bs.to(compute).contiguous(), Cs.to(compute).contiguous(),
        D.reshape(-1).to(compute), delta_bias=delta_bias.reshape(-1).to(compute), delta_softplus=True,
        backend=backend,
    ).view(batch, K, dim, length)
    y = ys.new_zeros(batch, dim, length)
    for k in range(K):
        y = y.index_add(2, order[k], ys[:, k])
    return y.transpose(1, 2).reshape(batch, height, width, dim).to(x.dtype)
