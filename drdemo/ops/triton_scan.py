"""The selective scan as Triton kernels: a fast CUDA path that needs nothing beyond requirements.txt.

torch's CUDA wheel ships Triton, which compiles these kernels at first use on whatever GPU is
present, so CUDA tensors get a fused scan without building mamba_ssm (nvcc, a matching toolkit
and a long compile). Under TRITON_INTERPRET=1 (set before the process imports Triton)
the same kernels run on CPU tensors in Triton's interpreter, which is how the tests check them
on machines without a GPU (in a subprocess: benchmarks.triton_parity).

Design. One program per (batch, group, block of channels) holds the recurrent state of its
channels, a (BLOCK_D, BLOCK_N) tile, in registers and walks the sequence once; the channel
blocks and groups run in parallel. Every tensor is read through explicit strides in a logical
(batch, group, channel, position) view, so mamba_ssm's (batch, dim, L) layout and SS2D's
channels-last feature map are both read in place; with `order` (groups, L) a group visits the
positions in its own order, which is how SS2D's four directions read one feature map by index
instead of materialising flipped and transposed copies. Outputs are written per group at each
position (the caller sums directions), so no two programs write one address: no atomics, and
results are deterministic.

The backward pass walks the sequence in reverse. The forward saves the state at the start of
every CHUNK positions when a gradient is needed; the backward recomputes one chunk's states
from its checkpoint into a per-program scratch buffer, then runs the reverse recurrence over
the chunk reading them back: memory ~1/CHUNK of storing every state, one extra forward pass.
Partial sums that span programs (dA and dD over the batch, dB and dC over channel blocks) are
written per program and reduced by torch.

The state is float32 whatever the inputs (float16 and bfloat16 inputs are read and converted
on load); float64 inputs are left to the sequential oracle by the dispatcher.
"""

import functools
import os
import shutil

import torch
import triton
import triton.language as tl

CHUNK = 64
MAX_BLOCK_D = 32


def interpreting() -> bool:
    """Whether TRITON_INTERPRET asks for Triton's interpreter, as Triton reads it now."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on", "y")


# Triton 3.x picks compiled or interpreted when `triton.jit` wraps a function, and its own
# language helpers (tl.zeros, tl.sum, ...) are wrapped when triton is imported: the interpreter
# works only when TRITON_INTERPRET=1 was set before that import, so the mode is fixed per process.
INTERPRETED = interpreting()


def unavailable_reason(device: torch.device) -> str | None:
    """Why the kernels cannot run for tensors on `device`, or None if they can.

    Checked without launching anything, so it is safe where CUDA is only emulated (ZeroGPU's main
    process): CPU tensors need the interpreter; CUDA tensors need a visible GPU of compute
    capability 7.0 or newer (torch's own floor for Triton) and a C compiler (Triton builds its
    launcher with one at first use).
    """
    if device.type == "cpu":
        if INTERPRETED:
            return None
        if interpreting():
            return "TRITON_INTERPRET=1 was set after Triton was imported; set it before the process starts"
        return "CPU tensors need TRITON_INTERPRET=1 (Triton's interpreter), set before the process starts"
    if device.type != "cuda":
        return f"no Triton kernel for {device.type} tensors"
    if INTERPRETED:
        return "TRITON_INTERPRET=1 is set: the interpreter runs CPU tensors only"
    if cuda_emulated():
        return "CUDA is emulated here (ZeroGPU attaches a GPU only inside @spaces.GPU calls)"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    return _cuda_reason(device.index if device.index is not None else torch.cuda.current_device())


def cuda_emulated() -> bool:
    """Whether this is ZeroGPU's main process, where the `spaces` package emulates CUDA.

    There `torch.cuda.is_available()` is patched to True and "CUDA" tensors live in host memory
    until a @spaces.GPU call runs in a worker with a real GPU (spaces 0.51: the patch is a lambda
    from spaces.zero.torch.patching, undone in the worker). No kernel can launch on such tensors,
    and launching one would initialise CUDA in the process ZeroGPU forks from, so it is refused;
    PyTorch's own ops (the sequential scan) still run on them.
    """
    return getattr(torch.cuda.is_available, "__module__", "").startswith("spaces")


@functools.lru_cache(maxsize=16)
def _cuda_reason(index: int) -> str | None:
    """The per-GPU part of `unavailable_reason`, cached: it is asked on every scan call."""
    if torch.version.hip is not None:
        return "ROCm builds are not tested with this kernel"
    major, minor = torch.cuda.get_device_capability(index)
    if (major, minor) < (7, 0):
        return f"GPU compute capability {major}.{minor} is below the 7.0 Triton needs"
    if not (os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")):
        return "no C compiler (gcc or clang, or $CC) for Triton's launcher"
    return None


@triton.jit
def _tile(groups, channels, dstate, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's (batch * group) index, batch, group, channels and state indices, their masks,
    and the offsets of its (BLOCK_D, BLOCK_N) state tile in a (channels, dstate) matrix."""
    pid_bg = tl.program_id(0).to(tl.int64)
    cs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    ns = tl.arange(0, BLOCK_N)
    c_mask = cs < channels
    n_mask = ns < dstate
    cn_mask = c_mask[:, None] & n_mask[None, :]
    tile = cs[:, None] * dstate + ns[None, :]
    return pid_bg, pid_bg // groups, pid_bg % groups, cs, ns, c_mask, n_mask, cn_mask, tile


@triton.jit
def _parameters(A_ptr, D_ptr, bias_ptr, g, channels, dstate, cs, c_mask, cn_mask, tile,
                HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The group's A tile and its channels' D and delta bias, as float32 (zeros, never read, where
    absent)."""
    A = tl.load(A_ptr + g * channels * dstate + tile, mask=cn_mask, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + g * channels + cs, mask=c_mask, other=0.0).to(tl.float32)
    else:
        Dv = tl.zeros(cs.shape, dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + g * channels + cs, mask=c_mask, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros(cs.shape, dtype=tl.float32)
    return A, Dv, bias


@triton.jit
def _input_rows(u_ptr, delta_ptr, B_ptr, C_ptr, b, g, cs, ns,
                u_sb, u_sg, u_sc, d_sb, d_sg, d_sc, b_sb, b_sg, b_sn, c_sb, c_sg, c_sn):
    """Pointers to this program's u and delta channels and its B and C states at position 0."""
    return (u_ptr + b * u_sb + g * u_sg + cs * u_sc, delta_ptr + b * d_sb + g * d_sg + cs * d_sc,
            B_ptr + b * b_sb + g * b_sg + ns * b_sn, C_ptr + b * c_sb + g * c_sg + ns * c_sn)


@triton.jit
def _position(order_ptr, g, o_sg, t, HAS_ORDER: tl.constexpr):
    """The position the group visits at step t: its own order's, or t itself."""
    if HAS_ORDER:
        pos = tl.load(order_ptr + g * o_sg + t).to(tl.int64)
    else:
        pos = tl.cast(t, tl.int64)
    return pos


@triton.jit
def _softplus(x):
    """softplus(x) and its slope, sigmoid(x).

    softplus is max(x, 0) + log1p(exp(-|x|)), identity above 20 as torch; log1p(w) as
    log(1 + w) * w / ((1 + w) - 1) keeps its precision for tiny w.
    """
    w = tl.exp(-tl.abs(x))
    up = 1.0 + w
    um1 = up - 1.0
    log1p_w = tl.where(um1 == 0.0, w, tl.log(up) * w / tl.where(um1 == 0.0, 1.0, um1))
    value = tl.where(x > 20.0, x, tl.maximum(x, 0.0) + log1p_w)
    slope = tl.where(x > 20.0, 1.0, tl.where(x < 0.0, w / up, 1.0 / up))
    return value, slope


@triton.jit
def _delta_at(d_base, pos, d_sl, c_mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """delta at one position as the recurrence uses it (bias added, then softplus), and its
    derivative with respect to the stored delta (the softplus slope; 1 without softplus)."""
    dv = tl.load(d_base + pos * d_sl, mask=c_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dv = dv + bias
    if SOFTPLUS:
        dv, slope = _softplus(dv)
    else:
        slope = tl.full(dv.shape, 1.0, tl.float32)
    return dv, slope


@triton.jit
def _step(h, A, dv, uv, Bv):
    """One step of the recurrence: h_t = exp(delta * A) * h_{t-1} + delta * u * B."""
    return tl.exp(dv[:, None] * A) * h + (dv * uv)[:, None] * Bv[None, :]


@triton.jit
def _forward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, order_ptr, y_ptr, last_ptr, ckpt_ptr,
    groups, channels, length, dstate, n_chunks,
    u_sb, u_sg, u_sc, u_sl, d_sb, d_sg, d_sc, d_sl, b_sb, b_sg, b_sn, b_sl, c_sb, c_sg, c_sn, c_sl,
    y_sb, y_sg, y_sc, y_sl, o_sg,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, HAS_D: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_ORDER: tl.constexpr, STORE_LAST: tl.constexpr,
    STORE_CKPT: tl.constexpr,
):
    pid_bg, b, g, cs, ns, c_mask, n_mask, cn_mask, tile = _tile(groups, channels, dstate, BLOCK_D, BLOCK_N)
    A, Dv, bias = _parameters(A_ptr, D_ptr, bias_ptr, g, channels, dstate, cs, c_mask, cn_mask, tile, HAS_D, HAS_BIAS)
    u_base, d_base, b_base, c_base = _input_rows(u_ptr, delta_ptr, B_ptr, C_ptr, b, g, cs, ns, u_sb, u_sg, u_sc,
                                                 d_sb, d_sg, d_sc, b_sb, b_sg, b_sn, c_sb, c_sg, c_sn)
    y_base = y_ptr + b * y_sb + g * y_sg + cs * y_sc
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)

    for ci in range(0, n_chunks):
        if STORE_CKPT:
            tl.store(ckpt_ptr + (pid_bg * n_chunks + ci) * channels * dstate + tile, h, mask=cn_mask)
        t0 = ci * CHUNK
        t1 = tl.minimum(t0 + CHUNK, length)
        for t in range(t0, t1):
            pos = _position(order_ptr, g, o_sg, t, HAS_ORDER)
            uv = tl.load(u_base + pos * u_sl, mask=c_mask, other=0.0).to(tl.float32)
            dv, _ = _delta_at(d_base, pos, d_sl, c_mask, bias, HAS_BIAS, SOFTPLUS)
            h = _step(h, A, dv, uv, tl.load(b_base + pos * b_sl, mask=n_mask, other=0.0).to(tl.float32))
            Cv = tl.load(c_base + pos * c_sl, mask=n_mask, other=0.0).to(tl.float32)
            yv = tl.sum(h * Cv[None, :], axis=1)
            if HAS_D:
                yv = yv + Dv * uv
            tl.store(y_base + pos * y_sl, yv, mask=c_mask)
    if STORE_LAST:
        tl.store(last_ptr + pid_bg * channels * dstate + tile, h, mask=cn_mask)


@triton.jit
def _backward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, order_ptr, dy_ptr, ckpt_ptr, scratch_ptr,
    du_ptr, ddelta_ptr, dA_ptr, dD_ptr, dB_ptr, dC_ptr,
    groups, channels, length, dstate, n_chunks, n_cblocks,
    u_sb, u_sg, u_sc, u_sl, d_sb, d_sg, d_sc, d_sl, b_sb, b_sg, b_sn, b_sl, c_sb, c_sg, c_sn, c_sl,
    dy_sb, dy_sg, dy_sc, dy_sl, du_sb, du_sg, du_sc, du_sl, dd_sb, dd_sg, dd_sc, dd_sl, o_sg,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, HAS_D: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_ORDER: tl.constexpr,
):
    pid_bg, b, g, cs, ns, c_mask, n_mask, cn_mask, tile = _tile(groups, channels, dstate, BLOCK_D, BLOCK_N)
    A, Dv, bias = _parameters(A_ptr, D_ptr, bias_ptr, g, channels, dstate, cs, c_mask, cn_mask, tile, HAS_D, HAS_BIAS)
    u_base, d_base, b_base, c_base = _input_rows(u_ptr, delta_ptr, B_ptr, C_ptr, b, g, cs, ns, u_sb, u_sg, u_sc,
                                                 d_sb, d_sg, d_sc, b_sb, b_sg, b_sn, c_sb, c_sg, c_sn)
    dy_base = dy_ptr + b * dy_sb + g * dy_sg + cs * dy_sc
    du_base = du_ptr + b * du_sb + g * du_sg + cs * du_sc
    dd_base = ddelta_ptr + b * dd_sb + g * dd_sg + cs * dd_sc
    program = pid_bg * n_cblocks + tl.program_id(1)
    partial = dB_ptr + program * length * dstate + ns  # dB and dC partials share one layout
    partial_c = dC_ptr + program * length * dstate + ns
    scratch = (scratch_ptr + program * CHUNK * BLOCK_D * BLOCK_N
               + tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + ns[None, :])

    gh = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # dL/dh carried backwards
    gA = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    gD = tl.zeros((BLOCK_D,), dtype=tl.float32)

    for k in range(0, n_chunks):
        ci = n_chunks - 1 - k
        t0 = ci * CHUNK
        t1 = tl.minimum(t0 + CHUNK, length)
        # Recompute this chunk's states from its checkpoint; slot t - t0 holds h before step t.
        h = tl.load(ckpt_ptr + (pid_bg * n_chunks + ci) * channels * dstate + tile, mask=cn_mask, other=0.0)
        for t in range(t0, t1):
            pos = _position(order_ptr, g, o_sg, t, HAS_ORDER)
            tl.store(scratch + (t - t0) * BLOCK_D * BLOCK_N, h)
            uv = tl.load(u_base + pos * u_sl, mask=c_mask, other=0.0).to(tl.float32)
            dv, _ = _delta_at(d_base, pos, d_sl, c_mask, bias, HAS_BIAS, SOFTPLUS)
            h = _step(h, A, dv, uv, tl.load(b_base + pos * b_sl, mask=n_mask, other=0.0).to(tl.float32))
        tl.debug_barrier()  # the scratch writes above are read back by other threads below

        for s in range(0, t1 - t0):
            t = t1 - 1 - s
            pos = _position(order_ptr, g, o_sg, t, HAS_ORDER)
            h_prev = tl.load(scratch + (t - t0) * BLOCK_D * BLOCK_N)
            uv = tl.load(u_base + pos * u_sl, mask=c_mask, other=0.0).to(tl.float32)
            dv, slope = _delta_at(d_base, pos, d_sl, c_mask, bias, HAS_BIAS, SOFTPLUS)
            Bv = tl.load(b_base + pos * b_sl, mask=n_mask, other=0.0).to(tl.float32)
            Cv = tl.load(c_base + pos * c_sl, mask=n_mask, other=0.0).to(tl.float32)
            gy = tl.load(dy_base + pos * dy_sl, mask=c_mask, other=0.0).to(tl.float32)
            a = tl.exp(dv[:, None] * A)
            dtu = dv * uv
            h_t = a * h_prev + dtu[:, None] * Bv[None, :]
            tl.store(partial_c + pos * dstate, tl.sum(gy[:, None] * h_t, axis=0), mask=n_mask)
            g_h = gh + gy[:, None] * Cv[None, :]  # dL/dh_t
            g_a = g_h * h_prev * a  # dL/d(delta * A) through exp
            gdelta = tl.sum(g_a * A + g_h * (uv[:, None] * Bv[None, :]), axis=1)
            gA += g_a * dv[:, None]
            tl.store(partial + pos * dstate, tl.sum(g_h * dtu[:, None], axis=0), mask=n_mask)
            gu = tl.sum(g_h * Bv[None, :], axis=1) * dv
            if HAS_D:
                gu = gu + gy * Dv
                gD += gy * uv
            if SOFTPLUS:
                gdelta = gdelta * slope
            gh = g_h * a
            tl.store(du_base + pos * du_sl, gu, mask=c_mask)
            tl.store(dd_base + pos * dd_sl, gdelta, mask=c_mask)
        tl.debug_barrier()  # before the next chunk overwrites the scratch buffer

    tl.store(dA_ptr + pid_bg * channels * dstate + tile, gA, mask=cn_mask)
    if HAS_D:
        tl.store(dD_ptr + pid_bg * channels + cs, gD, mask=c_mask)


def _blocks(channels: int, dstate: int) -> tuple[int, int, int]:
    block_d = min(MAX_BLOCK_D, triton.next_power_of_2(channels))
    block_n = triton.next_power_of_2(dstate)
    num_warps = 4 if block_d * block_n >= 512 else (2 if block_d * block_n >= 128 else 1)
    return block_d, block_n, num_warps


def _strides4(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.stride())


def _small(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Per-channel parameters as contiguous float32; a dummy pointer when absent."""
    return t.float().contiguous() if t is not None else like.new_empty(1, dtype=torch.float32)


class TritonScan(torch.autograd.Function):
    """Autograd wrapper of the kernels on the logical layout.

    u, delta: (batch, G, Dg, L), any strides (u may be expanded over G, stride 0); A: (G, Dg, N);
    B, C: (batch, G, N, L), any strides; D, delta_bias: (G, Dg) or None; order: (G, L) int32 whose
    rows are permutations of range(L), or None. Returns y (batch, G, Dg, L) float32, per group at
    each position, laid out like delta; and last_state (batch, G, Dg, N), or an empty tensor.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, order, softplus: bool, return_last_state: bool):
        batch, groups, channels, length = delta.shape
        dstate = A.shape[-1]
        a_dtype = A.dtype
        A, Dc, bias = A.float().contiguous(), _small(D, delta), _small(delta_bias, delta)
        block_d, block_n, num_warps = _blocks(channels, dstate)
        n_chunks = triton.cdiv(length, CHUNK)
        store_ckpt = any(ctx.needs_input_grad[:7])
        y = torch.empty_like(delta, dtype=torch.float32)
        last = delta.new_empty((batch, groups, channels, dstate) if return_last_state else (0,), dtype=torch.float32)
        ckpt = delta.new_empty((batch, groups, n_chunks, channels, dstate) if store_ckpt else (1,),
                               dtype=torch.float32)
        order_arg = order if order is not None else delta.new_empty(1, dtype=torch.int32)
        grid = (batch * groups, triton.cdiv(channels, block_d))
        _forward_kernel[grid](
            u, delta, A, B, C, Dc, bias, order_arg, y, last if return_last_state else y, ckpt,
            groups, channels, length, dstate, n_chunks,
            *_strides4(u), *_strides4(delta), *_strides4(B), *_strides4(C), *_strides4(y),
            order.stride(0) if order is not None else 0,
            BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=CHUNK, HAS_D=D is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(softplus), HAS_ORDER=order is not None, STORE_LAST=bool(return_last_state),
            STORE_CKPT=store_ckpt, num_warps=num_warps,
        )
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, order, ckpt)
        ctx.softplus, ctx.a_dtype = bool(softplus), a_dtype
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    def backward(ctx, grad_y, _grad_last):
        u, delta, A, B, C, D, delta_bias, order, ckpt = ctx.saved_tensors
        batch, groups, channels, length = delta.shape
        dstate = A.shape[-1]
        block_d, block_n, num_warps = _blocks(channels, dstate)
        n_chunks = triton.cdiv(length, CHUNK)
        n_cblocks = triton.cdiv(channels, block_d)
        programs = batch * groups * n_cblocks
        f32 = dict(dtype=torch.float32)
        scratch = delta.new_empty(programs * CHUNK * block_d * block_n, **f32)
        du = torch.empty_like(delta, **f32)
        ddelta = torch.empty_like(delta, **f32)
        dA = delta.new_empty(batch, groups, channels, dstate, **f32)
        dD = delta.new_empty(batch, groups, channels, **f32) if D is not None else delta.new_empty(1, **f32)
        dB = delta.new_empty(batch, groups, n_cblocks, length, dstate, **f32)
        dC = torch.empty_like(dB)
        order_arg = order if order is not None else delta.new_empty(1, dtype=torch.int32)
        _backward_kernel[(batch * groups, n_cblocks)](
            u, delta, A, B, C, _small(D, delta), _small(delta_bias, delta), order_arg, grad_y, ckpt, scratch,
            du, ddelta, dA, dD, dB, dC,
            groups, channels, length, dstate, n_chunks, n_cblocks,
            *_strides4(u), *_strides4(delta), *_strides4(B), *_strides4(C), *_strides4(grad_y),
            *_strides4(du), *_strides4(ddelta), order.stride(0) if order is not None else 0,
            BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=CHUNK, HAS_D=D is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=ctx.softplus, HAS_ORDER=order is not None, num_warps=num_warps,
        )
        dB = dB.sum(2).transpose(2, 3).to(B.dtype)
        dC = dC.sum(2).transpose(2, 3).to(C.dtype)
        return (du.to(u.dtype), ddelta.to(delta.dtype), dA.sum(0).to(ctx.a_dtype), dB, dC,
                dD.sum(0).to(D.dtype) if D is not None else None,
                ddelta.sum((0, 3)).to(delta_bias.dtype) if delta_bias is not None else None,
                None, None, None)
