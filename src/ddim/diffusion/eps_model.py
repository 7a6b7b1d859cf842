"""The one calling contract between a network and the diffusion math.

An ε-model is any callable `eps_model(x_t, t) -> ε̂` taking a batch x_t (B, C, H, W) and a 1-D
long tensor t of B timestep indices in [0, T), and returning ε̂ shaped like x_t: the U-Net, the
U-Net behind a precision adapter (`ddim.network.precision`), or the exact `GaussianOracle`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
