"""ddim.unet: the official layout, the parameter count, and each block against its formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ddim.config import load_config
from ddim.network.unet import (
    NEAR_ZERO,
    AttnBlock,
    Downsample,
    UNet,
    Upsample,
    near_zero_layers,
    reference_init_,
    timestep_embedding,
)

CIFAR10 = dict(
    ch=128, out_ch=3, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
    dropout=0.1, in_channels=3, resolution=32, resamp_with_conv=True,
)  # fmt: skip


def official_cifar10_layout() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official `Model` state_dict for configs/cifar10.yml, in module order.

    Written from the structure of ermongroup/ddim models/diffusion.py: temb.dense (2 Linear),
    conv_in, down[i] {block[j] (ResnetBlock), attn[j] (AttnBlock), downsample.conv}, mid
    {block_1, attn_1, block_2}, up[i] {block[j], attn[j], upsample.conv}, norm_out, conv_out.
    The up levels are built from i = 3 down to 0 but listed 0..3 (the official code prepends).
    Up blocks take ch·ch_mult[i] skip channels, the last one of a level ch·in_ch_mult[i].
    """
    ch, ch_mult, num_res_blocks, temb_ch = 128, (1, 2, 2, 2), 2, 512
    in_ch_mult = (1, *ch_mult)
    attn_levels = {1}  # resolution 16 of 32, 16, 8, 4

    def linear(d, name, n_in, n_out):
        d[f"{name}.weight"], d[f"{name}.bias"] = (n_out, n_in), (n_out,)

    def conv(d, name, n_in, n_out, k):
        d[f"{name}.weight"], d[f"{name}.bias"] = (n_out, n_in, k, k), (n_out,)

    def norm(d, name, c):
        d[f"{name}.weight"], d[f"{name}.bias"] = (c,), (c,)

    def resnet(d, name, n_in, n_out):
        norm(d, f"{name}.norm1", n_in)
        conv(d, f"{name}.conv1", n_in, n_out, 3)
        linear(d, f"{name}.temb_proj", temb_ch, n_out)
        norm(d, f"{name}.norm2", n_out)
        conv(d, f"{name}.conv2", n_out, n_out, 3)
        if n_in != n_out:
            conv(d, f"{name}.nin_shortcut", n_in, n_out, 1)

    def attn(d, name, c):
        norm(d, f"{name}.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(d, f"{name}.{part}", c, c, 1)

    layout: dict[str, tuple[int, ...]] = {}
    linear(layout, "temb.dense.0", ch, temb_ch)
    linear(layout, "temb.dense.1", temb_ch, temb_ch)
    conv(layout, "conv_in", 3, ch, 3)
    for i in range(4):
        block_in = ch * in_ch_mult[i]
        for j in range(num_res_blocks):
            resnet(layout, f"down.{i}.block.{j}", block_in, ch * ch_mult[i])
            block_in = ch * ch_mult[i]
        if i in attn_levels:
            for j in range(num_res_blocks):
                attn(layout, f"down.{i}.attn.{j}", block_in)
        if i != 3:
            conv(layout, f"down.{i}.downsample.conv", block_in, block_in, 3)
    resnet(layout, "mid.block_1", block_in, block_in)
    attn(layout, "mid.attn_1", block_in)
    resnet(layout, "mid.block_2", block_in, block_in)
    up: list[dict[str, tuple[int, ...]]] = [{} for _ in range(4)]
    for i in reversed(range(4)):
        for j in range(num_res_blocks + 1):
            skip_in = ch * (ch_mult[i] if j < num_res_blocks else in_ch_mult[i])
            resnet(up[i], f"up.{i}.block.{j}", block_in + skip_in, ch * ch_mult[i])
            block_in = ch * ch_mult[i]
        if i in attn_levels:
            for j in range(num_res_blocks + 1):
                attn(up[i], f"up.{i}.attn.{j}", block_in)
        if i != 0:
            conv(up[i], f"up.{i}.upsample.conv", block_in, block_in, 3)
    for level in up:
        layout.update(level)
    norm(layout, "norm_out", block_in)
    conv(layout, "conv_out", block_in, 3, 3)
    return layout


def test_official_layout_facts():
    layout = official_cifar10_layout()
    assert sum(math.prod(s) for s in layout.values()) == 35_746_307
    assert layout["up.3.block.0.conv1.weight"] == (256, 512, 3, 3)
    assert layout["up.1.block.2.conv1.weight"] == (256, 384, 3, 3)
    assert layout["up.0.block.2.nin_shortcut.weight"] == (128, 256, 1, 1)
    assert layout["down.1.attn.1.q.weight"] == (256, 256, 1, 1)
    assert "down.0.attn.0.q.weight" not in layout and "down.3.downsample.conv.weight" not in layout


def test_official_state_dict_loads_strictly_in_the_same_order():
    layout = official_cifar10_layout()
    with torch.device("meta"):
        net = UNet(**CIFAR10)
    assert list(net.state_dict()) == list(layout)  # same order: optimiser states map one to one
    state = {k: torch.empty(shape, device="meta") for k, shape in layout.items()}
    net.load_state_dict(state, strict=True, assign=True)  # checks every key and every shape
    state["conv_out.weight"] = torch.empty(3, 128, 1, 1, device="meta")
    with pytest.raises(RuntimeError, match="size mismatch"):
        net.load_state_dict(state, strict=True, assign=True)


def test_cifar10_parameter_count():
    c = load_config("cifar10")
    with torch.device("meta"):
        net = UNet.from_config(c.model, c.data.image_size)
    assert sum(p.numel() for p in net.parameters()) == 35_746_307
    with torch.device("meta"):
        assert sum(p.numel() for p in UNet(**CIFAR10).parameters()) == 35_746_307


@pytest.fixture(scope="module")
def tiny():
    c = load_config("tiny")
    torch.manual_seed(0)
    return UNet.from_config(c.model, c.data.image_size).eval(), c.data.image_size


def test_cifar10_forward_shape():
    torch.manual_seed(0)
    net = UNet(**CIFAR10).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = net(x, torch.tensor([500]))
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_timesteps_are_one_per_image(tiny):
    net, size = tiny
    x = torch.randn(3, 3, size, size)
    t = torch.tensor([0, 10, 999])
    with torch.no_grad():
        batch = net(x, t)
        single = torch.cat([net(x[i : i + 1], t[i : i + 1]) for i in range(3)])
        scalar = net(x, torch.tensor(10))
        same_t = net(x, torch.tensor([10, 10, 10]))
        as_float = net(x, t.double())
    torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-5)
    assert torch.equal(scalar, same_t) and torch.equal(batch, as_float)
    with pytest.raises(ValueError, match="shape"):
        net(x, torch.tensor([1, 2]))


def test_timestep_embedding_closed_form():
    # dim 4: half = 2, ω = (1, 10000^-1); emb = [sin t, sin(t/1e4), cos t, cos(t/1e4)]
    t = torch.tensor([0.0, 1.0, 250.0])
    expected = torch.stack(
        [torch.sin(t), torch.sin(t / 1e4), torch.cos(t), torch.cos(t / 1e4)], dim=1
    )
    torch.testing.assert_close(timestep_embedding(t, 4), expected)
    odd = timestep_embedding(t, 5)
    assert odd.shape == (3, 5) and torch.all(odd[:, 4] == 0)
    torch.testing.assert_close(odd[:, :4], expected)


def test_attention_is_softmax_qk_v():
    torch.manual_seed(0)
    block = AttnBlock(32).eval()
    x = torch.randn(2, 32, 4, 5)
    h = block.norm(x)
    q, k, v = (layer(h).flatten(2) for layer in (block.q, block.k, block.v))  # (B, C, N)
    weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(32), dim=2)
    attended = torch.einsum("bij,bcj->bci", weights, v).reshape(2, 32, 4, 5)
    expected = x + block.proj_out(attended)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_downsample_pads_right_and_bottom_only():
    down = Downsample(1, with_conv=True)
    with torch.no_grad():
        down.conv.weight.zero_()
        down.conv.bias.zero_()
        down.conv.weight[0, 0, 0, 0] = 1.0  # picks x[2i, 2j]
        x = torch.arange(36.0).reshape(1, 1, 6, 6)
        assert torch.equal(down(x), x[:, :, ::2, ::2])
        down.conv.weight[0, 0, 0, 0] = 0.0
        down.conv.weight[0, 0, 2, 2] = 1.0  # picks x[2i + 2, 2j + 2]: zero past the edge
        out = down(x)
    assert torch.equal(out[:, :, :2, :2], x[:, :, 2::2, 2::2])
    assert torch.all(out[:, :, 2, :] == 0) and torch.all(out[:, :, :, 2] == 0)
    assert torch.equal(Downsample(1, with_conv=False)(x), F.avg_pool2d(x, 2))


def test_upsample_repeats_pixels():
    x = torch.arange(4.0).reshape(1, 1, 2, 2)
    expected = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3.0]])
    assert torch.equal(Upsample(1, with_conv=False)(x)[0, 0], expected)


def test_channels_last_matches_eager(tiny):
    net, size = tiny
    x = torch.randn(2, 3, size, size)
    t = torch.tensor([3, 700])
    with torch.no_grad():
        reference = net(x, t)
        net_cl = UNet.from_config(load_config("tiny").model, size).eval()
        net_cl.load_state_dict(net.state_dict())
        net_cl = net_cl.to(memory_format=torch.channels_last)
        out = net_cl(x.to(memory_format=torch.channels_last), t)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_is_close_to_fp32(tiny):
    net, size = tiny
    x = torch.randn(2, 3, size, size)
    t = torch.tensor([3, 700])
    with torch.no_grad():
        reference = net(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x, t)
    assert out.shape == reference.shape
    relative = (out.float() - reference).norm() / reference.norm()
    assert relative < 0.05


def test_from_config_matches_the_keywords():
    c = load_config("cifar10")
    with torch.device("meta"):
        a, b = UNet.from_config(c.model, 32), UNet(**CIFAR10)
    assert {k: v.shape for k, v in a.state_dict().items()} == {
        k: v.shape for k, v in b.state_dict().items()
    }


def _limit(weight: torch.Tensor, scale: float) -> float:
    """√(3·scale/fan_avg) for a Linear or Conv2d weight."""
    receptive = weight[0, 0].numel() if weight.ndim == 4 else 1
    fan_avg = (weight.shape[0] + weight.shape[1]) * receptive / 2
    return math.sqrt(3 * scale / fan_avg)


def test_reference_init():
    torch.manual_seed(0)
    net = reference_init_(UNet(**{**CIFAR10, "ch": 64, "resolution": 16, "attn_resolutions": (8,)}))
    near_zero = near_zero_layers(net)
    # 8 down + 2 mid + 12 up residual blocks, 2 + 1 + 3 attention blocks, conv_out
    assert len(near_zero) == 22 + 6 + 1
    near_zero_ids = {id(m) for m in near_zero}
    for name, module in net.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            assert torch.all(module.bias == 0), name
            scale = NEAR_ZERO if id(module) in near_zero_ids else 1.0
            limit = _limit(module.weight, scale)
            assert module.weight.abs().max() <= limit, name
            if module.weight.numel() > 10_000:  # U(−a, a) has standard deviation a/√3
                assert abs(module.weight.std().item() / (limit / math.sqrt(3)) - 1) < 0.05, name
        if isinstance(module, torch.nn.GroupNorm):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    names = {n for n, m in net.named_modules() if id(m) in near_zero_ids}
    assert {"conv_out", "mid.attn_1.proj_out", "up.0.block.2.conv2"} <= names
    with torch.no_grad():  # every block starts as (nearly) the identity, the output at 0
        out = net.eval()(torch.randn(1, 3, 16, 16), torch.tensor([10]))
    assert out.abs().max() < 1e-3
