"""MedMamba (Yue & Li, 2024): a Vision-Mamba / convolution hybrid for medical images.

Each SS-Conv-SSM block splits its channels in half: one half goes through a 3x3-3x3-1x1
convolution branch, the other through LayerNorm and SS2D, a selective scan over the feature
map in four directions. The halves are concatenated, channel-shuffled and added to the input.

Parameter names and shapes follow the authors' MedMamba.py (github.com/YubiaoYue/MedMamba),
so their state_dicts load here with strict=True and give the same logits
(tests/test_models.py checks both against facts generated from the official code).

Unlike the official code, features stay channels-last (batch, H, W, C) end to end, the four
scan directions are read by index inside the scan (drdemo.ops.selective_scan_2d) rather than
built as flipped and transposed copies, and convolutions run in channels_last memory format.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from drdemo.models._registry import ModelDefaults, register_model
from drdemo.ops import selective_scan_2d

SCAN_DIRECTIONS = 4


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class PatchEmbed2D(nn.Module):
    """Non-overlapping patch embedding to a channels-last map."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96,
                 norm_layer: type[nn.Module] | None = nn.LayerNorm):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x.contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)
        return self.norm(x) if self.norm is not None else x


class PatchMerging2D(nn.Module):
    """Halve the resolution, double the channels: 2x2 neighbours -> LayerNorm -> Linear."""

    def __init__(self, dim: int, norm_layer: type[nn.Module] = nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, height, width, _ = x.shape
        h, w = height // 2 * 2, width // 2 * 2  # an odd last row/column is dropped, as upstream
        x = x[:, :h, :w]
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class SS2D(nn.Module):
    """2-D selective scan: in_proj -> depthwise conv -> four-direction S6 scan -> gate -> out_proj."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 3, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_scale: float = 1.0, dt_init_floor: float = 1e-4, dropout: float = 0.0,
                 conv_bias: bool = True, bias: bool = False):
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        k, d, r, n = SCAN_DIRECTIONS, self.d_inner, self.dt_rank, d_state

        self.in_proj = nn.Linear(d_model, 2 * d, bias=bias)
        self.conv2d = nn.Conv2d(d, d, kernel_size=d_conv, padding=(d_conv - 1) // 2, groups=d, bias=conv_bias)
        # Per direction: x -> (dt_rank | B | C); dt_rank -> delta per channel.
        bound = d ** -0.5
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, d).uniform_(-bound, bound))
        dt_std = r ** -0.5 * dt_scale
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d, r).uniform_(-dt_std, dt_std))
        # Bias = softplus^-1 of a step size drawn log-uniformly from [dt_min, dt_max].
        dt = torch.exp(torch.rand(k, d) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real initialisation: A = -(1..N) for every channel of every direction.
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(k * d, 1))
        self.Ds = nn.Parameter(torch.ones(k * d))
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True
        self.out_norm = nn.LayerNorm(d)
        self.out_proj = nn.Linear(d, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0.0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        k, d, r, n = SCAN_DIRECTIONS, self.d_inner, self.dt_rank, self.d_state
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = self.conv2d(x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last))
        x = F.silu(x).permute(0, 2, 3, 1)  # (batch, H, W, d)

        x_dbl = (x @ self.x_proj_weight.reshape(k * (r + 2 * n), d).t()).view(batch, height, width, k, r + 2 * n)
        dt_low, B, C = x_dbl.split([r, n, n], dim=-1)
        # The four dt projections as one batched matmul over directions; the result is used
        # through a (batch, H, W, k, d) view, the scan reads any strides.
        delta = torch.bmm(dt_low.reshape(-1, k, r).transpose(0, 1), self.dt_projs_weight.transpose(1, 2))
        delta = delta.view(k, batch, height, width, d).permute(1, 2, 3, 0, 4)
        A = -torch.exp(self.A_logs.float()).view(k, d, n)

        y = selective_scan_2d(x, delta, A, B, C, self.Ds.view(k, d), self.dt_projs_bias)
        y = self.out_norm(y) * F.silu(z)
        out = self.out_proj(y)
        return self.dropout(out) if self.dropout is not None else out


class SS_Conv_SSM(nn.Module):  # noqa: N801 - the official class name, kept for recognisability
    """Half the channels through convolutions, half through SS2D; shuffle; residual."""

    def __init__(self, hidden_dim: int, drop_path: float = 0.0, norm_layer: type[nn.Module] = nn.LayerNorm,
                 attn_drop_rate: float = 0.0, d_state: int = 16):
        super().__init__()
        half = hidden_dim // 2
        self.ln_1 = norm_layer(half)
        self.self_attention = SS2D(d_model=half, dropout=attn_drop_rate, d_state=d_state)
        self.drop_path = DropPath(drop_path)
        self.conv33conv33conv11 = nn.Sequential(
            nn.BatchNorm2d(half),
            nn.Conv2d(half, half, kernel_size=3, padding=1),
            nn.BatchNorm2d(half),
            nn.ReLU(),
            nn.Conv2d(half, half, kernel_size=3, padding=1),
            nn.BatchNorm2d(half),
            nn.ReLU(),
            nn.Conv2d(half, half, kernel_size=1),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv_half, ssm_half = x.chunk(2, dim=-1)
        ssm_half = self.drop_path(self.self_attention(self.ln_1(ssm_half)))
        conv_half = self.conv33conv33conv11(conv_half.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last))
        # cat([conv, ssm]) then a 2-group channel shuffle == interleave the two halves.
        mixed = torch.stack([conv_half.permute(0, 2, 3, 1), ssm_half], dim=-1).flatten(-2)
        return mixed + x


class VSSLayer(nn.Module):
    """One stage: a stack of SS-Conv-SSM blocks, then optional patch merging."""

    def __init__(self, dim: int, depth: int, drop_path: list[float], attn_drop: float = 0.0,
                 norm_layer: type[nn.Module] = nn.LayerNorm, downsample: bool = False, d_state: int = 16):
        super().__init__()
        self.dim = dim
        self.blocks = nn.ModuleList(
            SS_Conv_SSM(hidden_dim=dim, drop_path=drop_path[i], norm_layer=norm_layer,
                        attn_drop_rate=attn_drop, d_state=d_state)
            for i in range(depth)
        )
        self.downsample = PatchMerging2D(dim, norm_layer=norm_layer) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class MedMamba(nn.Module):
    """The official VSSM classifier: patch embedding, four stages, global average pool, linear head."""

    def __init__(self, num_classes: int = 5, depths: tuple[int, ...] = (2, 2, 4, 2),
                 dims: tuple[int, ...] = (96, 192, 384, 768), in_chans: int = 3, patch_size: int = 4,
                 d_state: int = 16, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1):
        super().__init__()
        if any(b != 2 * a for a, b in zip(dims, dims[1:])):
            raise ValueError(f"dims must double from stage to stage (patch merging), got {list(dims)}")
        self.num_classes = num_classes
        self.num_features = dims[-1]
        self.patch_embed = PatchEmbed2D(patch_size=patch_size, in_chans=in_chans, embed_dim=dims[0])
        self.pos_drop = nn.Dropout(p=drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList(
            VSSLayer(dim=dims[i], depth=depths[i], drop_path=rates[starts[i]:starts[i] + depths[i]],
                     attn_drop=attn_drop_rate, downsample=i < len(depths) - 1, d_state=d_state)
            for i in range(len(depths))
        )
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()
        # Convolution weights in channels_last to match the channels-last activations: oneDNN
        # then runs without reordering weights per call (1.7x faster 3x3 convs at 14x14 and
        # 7x7 here). load_state_dict copies into these tensors and keeps their layout.
        self.to(memory_format=torch.channels_last)

    def _init_weights(self) -> None:
        """As upstream: truncated-normal Linear weights, unit LayerNorms, Kaiming convolutions."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) image -> (batch, H/32, W/32, C) channels-last features."""
        x = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(dim=(1, 2)))


# The lesion decoder reads stage 1's merged output: 1/8 of the input, 2 x the first width (B, H, W, C).
_MEDMAMBA = ModelDefaults(input_size=224, cam_target_layer="layers.3", cam_reshape="bhwc_to_bchw", classifier="head",
                          lesion_layer="layers.0", lesion_features_channels_last=True)


@register_model(replace(_MEDMAMBA, display_name="MedMamba-T"))
def medmamba_t(num_classes: int = 5, **kwargs) -> MedMamba:
    """MedMamba-T: depths [2, 2, 4, 2], dims 96..768 (14.46 M parameters at 5 classes)."""
    return MedMamba(num_classes=num_classes, depths=(2, 2, 4, 2), dims=(96, 192, 384, 768), **kwargs)


@register_model(replace(_MEDMAMBA, display_name="MedMamba-S"))
def medmamba_s(num_classes: int = 5, **kwargs) -> MedMamba:
    """MedMamba-S: depths [2, 2, 8, 2], dims 96..768."""
    return MedMamba(num_classes=num_classes, depths=(2, 2, 8, 2), dims=(96, 192, 384, 768), **kwargs)


@register_model(replace(_MEDMAMBA, display_name="MedMamba-B"))
def medmamba_b(num_classes: int = 5, **kwargs) -> MedMamba:
    """MedMamba-B: depths [2, 2, 12, 2], dims 128..1024."""
    return MedMamba(num_classes=num_classes, depths=(2, 2, 12, 2), dims=(128, 256, 512, 1024), **kwargs)
