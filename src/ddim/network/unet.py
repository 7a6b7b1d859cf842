"""The DDPM U-Net ε_θ(x_t, t) (Ho et al. 2020, App. B), laid out so the official weights load as-is.

Module and parameter names and shapes are those of the official PyTorch ports (ermongroup/ddim
`models/diffusion.py` `Model`, and the DDPM TensorFlow weights converted to it), so their
state_dicts load with `strict=True`:

    temb.dense.{0,1}                      timestep-embedding MLP, ch -> 4ch -> 4ch
    conv_in                               3x3, in_channels -> ch
    down.{i}.block.{j}, down.{i}.attn.{j} residual (+ attention) blocks of level i
    down.{i}.downsample.conv              3x3 stride 2 (all but the last level)
    mid.block_1, mid.attn_1, mid.block_2  the bottleneck
    up.{i}.block.{j}, up.{i}.attn.{j}     num_res_blocks + 1 blocks per level, fed by skips
    up.{i}.upsample.conv                  nearest x2 then 3x3 (all but level 0)
    norm_out, conv_out                    GroupNorm, swish, 3x3 -> out_ch

Each residual block has norm1, conv1, temb_proj, norm2, dropout, conv2 and, where the channel
count changes, a 1x1 `nin_shortcut`; each attention block has norm, q, k, v, proj_out (1x1 convs).

The network knows nothing of β or ᾱ: it maps (x_t, t) to a tensor shaped like x_t. Attention runs
through `scaled_dot_product_attention`, the same softmax(q·kᵀ/√C)·v as the official code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ddim.config.schema import ModelConfig


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [sin(t·ω_k), cos(t·ω_k)], ω_k = 10000^(−k/(dim/2 − 1)), as in DDPM."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    omega = torch.exp(-math.log(10000.0) * k / (half - 1))
    angles = t.to(torch.float32)[:, None] * omega[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(emb, (0, dim % 2))


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with ε = 1e-6 and, as in the DDPM code, 32 groups unless told otherwise."""
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """h = conv2(drop(swish(norm2(conv1(swish(norm1(x))) + temb_proj(swish(temb)))))); x' + h."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        dropout: float,
        groups: int = 32,
    ):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H·W positions, with a residual connection."""

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)
        # (B, C, H, W) -> (B, 1, HW, C): one head whose tokens are the pixels.
        q, k, v = (p(h).flatten(2).transpose(1, 2).unsqueeze(1) for p in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √C) v
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, height, width)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve H and W: pad right/bottom by one then 3x3 stride-2 conv (TF 'SAME'), or 2x2 average."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "conv"):
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour repetition, then an optional 3x3 conv."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class Level(nn.Module):
    """One resolution of the U-Net: residual blocks, their attention blocks, a resampler."""

    def __init__(self):
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class UNet(nn.Module):
    """ε_θ(x, t): the DDPM U-Net; `t` holds one timestep index per image (int or float)."""

    def __init__(
        self,
        *,
        ch: int = 128,
        out_ch: int = 3,
        ch_mult: tuple[int, ...] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] = (16,),
        dropout: float = 0.1,
        in_channels: int = 3,
        resolution: int = 32,
        resamp_with_conv: bool = True,
        num_groups: int = 32,
    ):
        super().__init__()
        g = num_groups
        self.ch, self.num_res_blocks, self.resolution = ch, num_res_blocks, resolution
        self.num_resolutions = len(ch_mult)
        temb_ch = 4 * ch
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, temb_ch), nn.Linear(temb_ch, temb_ch)])
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)

        # Downsampling path: level i works at resolution / 2^i with ch·ch_mult[i] channels.
        widths = [ch * m for m in ch_mult]
        skips, block_in, res = [ch], ch, resolution
        self.down = nn.ModuleList()
        for i, width in enumerate(widths):
            level = Level()
            for _ in range(num_res_blocks):
                level.block.append(ResnetBlock(block_in, width, temb_ch, dropout, g))
                block_in = width
                if res in attn_resolutions:
                    level.attn.append(AttnBlock(width, g))
                skips.append(width)
            if i != self.num_resolutions - 1:
                level.downsample = Downsample(width, resamp_with_conv)
                res //= 2
                skips.append(width)
            self.down.append(level)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, temb_ch, dropout, g)
        self.mid.attn_1 = AttnBlock(block_in, g)
        self.mid.block_2 = ResnetBlock(block_in, block_in, temb_ch, dropout, g)

        # Upsampling path: each block takes the concatenation [h, skip] popped from the stack.
        up_levels = []
        for i in reversed(range(self.num_resolutions)):
            level = Level()
            for _ in range(num_res_blocks + 1):
                level.block.append(
                    ResnetBlock(block_in + skips.pop(), widths[i], temb_ch, dropout, g)
                )
                block_in = widths[i]
                if res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in, g))
            if i != 0:
                level.upsample = Upsample(block_in, resamp_with_conv)
                res *= 2
            up_levels.insert(0, level)
        self.up = nn.ModuleList(up_levels)

        self.norm_out = group_norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    @classmethod
    def from_config(cls, model: ModelConfig, image_size: int) -> UNet:
        """Build the network a `ModelConfig` describes, for images of side `image_size`."""
        return cls(
            ch=model.ch,
            out_ch=model.out_ch,
            ch_mult=tuple(model.ch_mult),
            num_res_blocks=model.num_res_blocks,
            attn_resolutions=tuple(model.attn_resolutions),
            dropout=model.dropout,
            in_channels=model.in_channels,
            resolution=image_size,
            resamp_with_conv=model.resamp_with_conv,
            num_groups=model.num_groups,
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε_θ(x_t, t) for a batch x of shape (B, C, H, W) and timesteps t of shape (B,) or ()."""
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        dense = self.temb.dense[0]
        temb = timestep_embedding(t, self.ch).to(dense.weight.dtype)  # bf16 in a bf16 network
        temb = self.temb.dense[1](F.silu(dense(temb)))

        hs = [self.conv_in(x)]
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(hs[-1], temb)
                hs.append(level.attn[j](h) if level.attn else h)
            if hasattr(level, "downsample"):
                hs.append(level.downsample(hs[-1]))

        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)

        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                if level.attn:
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)

        return self.conv_out(F.silu(self.norm_out(h)))


NEAR_ZERO = 1e-10


def _variance_scaling_(weight: torch.Tensor, scale: float) -> None:
    """Fill with U(−a, a), a = √(3·scale / fan_avg), fan_avg = (fan_in + fan_out) / 2."""
    receptive = weight[0, 0].numel() if weight.ndim > 2 else 1
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    limit = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2))
    with torch.no_grad():
        weight.uniform_(-limit, limit)


def near_zero_layers(net: UNet) -> list[nn.Module]:
    """The layers DDPM initialises at scale 1e-10: each block's conv2, each proj_out, conv_out."""
    layers = [m.conv2 for m in net.modules() if isinstance(m, ResnetBlock)]
    layers += [m.proj_out for m in net.modules() if isinstance(m, AttnBlock)]
    return layers + [net.conv_out]


def reference_init_(net: UNet) -> UNet:
    """DDPM's TF initialisation: variance scaling (fan_avg, uniform), scale 1, biases zero.

    The residual blocks' `conv2`, the attention blocks' `proj_out` and the final `conv_out` get
    scale 1e-10 (the TF code's `init_scale=0.`), so every block starts as nearly the identity.
    GroupNorm layers keep weight 1 and bias 0.
    """
    near_zero = {id(m) for m in near_zero_layers(net)}
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            _variance_scaling_(module.weight, NEAR_ZERO if id(module) in near_zero else 1.0)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.GroupNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return net
