"""The texture stage's colour field: albedo at surface points, hash grid -> small MLP -> sigmoid."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import HashGridConfig
from .hashgrid import make_hash_grid


class TextureField(nn.Module):
    def __init__(self, grid: HashGridConfig, hidden_dim: int, bound: float = 1.0):
        super().__init__()
        self.bound = float(bound)
        self.grid = make_hash_grid(grid)
        self.mlp = nn.Sequential(nn.Linear(self.grid.out_dim, hidden_dim), nn.ReLU(inplace=True),
                                 nn.Linear(hidden_dim, 3))

    def forward(self, x: Tensor) -> Tensor:
        """x [N,3] world -> albedo [N,3] in [0,1]."""
        unit = ((x / self.bound + 1) / 2).clamp(0, 1)
        return torch.sigmoid(self.mlp(self.grid(unit).to(self.mlp[0].weight.dtype)))

    def param_groups(self, lr_grid: float, lr_heads: float) -> list[dict]:
        return [{"name": "grid", "params": list(self.grid.parameters()), "lr": lr_grid},
                {"name": "heads", "params": list(self.mlp.parameters()), "lr": lr_heads}]
