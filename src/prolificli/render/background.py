"""What a ray sees when it leaves the scene box without hitting anything.

"neural": a learned environment map, a small MLP of the ray direction (as DreamFusion / threestudio's
neural environment map background). The direction is normalised and lifted with a few sin/cos
frequencies, enough for smooth sky-like gradients but too coarse to paint the object onto the
background. "solid": a fixed colour, no parameters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import BackgroundConfig


class Background(nn.Module):
    N_FREQUENCIES = 3  # encodes sin/cos(2^k * pi * d) for k < 3, plus d itself

    def __init__(self, cfg: BackgroundConfig):
        super().__init__()
        self.cfg = cfg
        self.kind = cfg.kind
        if cfg.kind == "neural":
            in_dim = 3 + 3 * 2 * self.N_FREQUENCIES
            self.mlp = nn.Sequential(
                nn.Linear(in_dim, cfg.hidden_dim),
                nn.ReLU(inplace=True),
                nn.Linear(cfg.hidden_dim, 3),
            )
            self.register_buffer("frequencies", (2.0 ** torch.arange(self.N_FREQUENCIES)) * math.pi, persistent=False)
        elif cfg.kind == "solid":
            self.register_buffer("color", torch.tensor(cfg.color, dtype=torch.float32), persistent=False)
        else:
            raise ValueError(f"unknown background kind {cfg.kind!r}")

    def forward(self, directions: Tensor) -> Tensor:
        """directions [...,3] (any length) -> rgb [...,3] in [0,1]."""
        if self.kind == "solid":
            return self.color.to(directions.dtype).expand(*directions.shape[:-1], 3)
        d = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        angles = d[..., None, :] * self.frequencies[:, None]  # [...,K,3]
        encoded = torch.cat([d, angles.sin().flatten(-2), angles.cos().flatten(-2)], dim=-1)
        return torch.sigmoid(self.mlp(encoded))
