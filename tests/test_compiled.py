"""compile_blocks: the network compiled block by block, on the CPU at a tiny size."""

import torch

from ddim.network.compiled import compile_blocks
from ddim.network.unet import AttnBlock, ResnetBlock, UNet


def test_compiled_blocks_share_the_weights_and_give_the_eager_outputs_and_gradients():
    torch.manual_seed(0)
    # two levels: blocks of two shapes (8 and 4 px, 16 and 32 channels), one with attention
    net = UNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
               resolution=8, num_groups=8)  # fmt: skip
    twin = compile_blocks(net)
    assert list(twin.state_dict()) == list(net.state_dict())  # no `_orig_mod.` in the keys
    assert all(a is b for a, b in zip(twin.parameters(), net.parameters(), strict=True))
    blocks = [m for m in twin.modules() if isinstance(m, (ResnetBlock, AttnBlock))]
    assert blocks and all(m._compiled_call_impl is not None for m in blocks)
    assert all(m._compiled_call_impl is None for m in net.modules())  # net itself stays eager

    x, t = torch.randn(3, 3, 8, 8), torch.tensor([0, 500, 999])
    eager_out = net(x, t)
    eager_out.square().mean().backward()
    eager_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    out = twin(x, t)
    out.square().mean().backward()  # the gradients land on net's own parameters
    torch.testing.assert_close(out, eager_out, atol=1e-5, rtol=1e-4)
    for grad, eager in zip((p.grad for p in net.parameters()), eager_grads, strict=True):
        torch.testing.assert_close(grad, eager, atol=1e-5, rtol=1e-3)
