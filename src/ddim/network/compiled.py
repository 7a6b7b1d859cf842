"""torch.compile for the U-Net one block at a time (regional compilation).

Compiling the whole network traces one graph of every block in a row; compiling each residual and
attention block instead traces a block once per shape it sees, and the blocks of the same shape
share the compiled code. What inductor fuses (GroupNorm with SiLU, the residual adds, the casts)
lies inside the blocks; the padded stride-2 downsampling, behind which whole-network compilation
under bf16 autocast zeroed the gradients on the CPU, stays eager between them. Training uses it
(`ddim train --compile`: right gradients, and a shorter compilation on the CPU, docs/performance.md,
"Training"); sampling compiles the whole network, whose frozen weights inductor folds.
"""

from __future__ import annotations

import copy
import itertools

from torch import nn

from ddim.network.unet import AttnBlock, ResnetBlock

# Each block shape (and batch size) is one more compilation of the same `forward`; dynamo's default
# limit of 8 would leave the rest of a U-Net's blocks eager.
RECOMPILE_LIMIT = 64


def compile_blocks(net: nn.Module) -> nn.Module:
    """A twin of `net` whose residual and attention blocks are compiled, for static shapes.

    The twin holds the same parameter and buffer objects as `net` (only the modules around them
    are copied): training the twin trains `net`, its state_dict has `net`'s keys, and `net` itself
    stays eager, the reference a compiled network's gradients are checked against. Static shapes
    (`dynamic=False`): dynamo's automatic dynamic shapes made inductor fail on the backward pass
    of these blocks (PyTorch 2.13, CPU), and a batch size seen once more compiles once more.
    """
    import torch._dynamo.config as dynamo_config

    for key in ("recompile_limit", "cache_size_limit"):  # the limit's name since / before 2.7
        if getattr(dynamo_config, key, RECOMPILE_LIMIT) < RECOMPILE_LIMIT:
            setattr(dynamo_config, key, RECOMPILE_LIMIT)
    shared = {id(t): t for t in itertools.chain(net.parameters(), net.buffers())}
    twin = copy.deepcopy(net, memo=shared)
    for module in twin.modules():
        if isinstance(module, (ResnetBlock, AttnBlock)):
            module.compile(dynamic=False)
    return twin
