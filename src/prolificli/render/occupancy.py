"""An occupancy grid for empty-space skipping, in pure PyTorch (the idea of nerfacc's estimator).

res^3 cells cover the scene box [-bound, bound]^3. Each keeps an exponential moving average of
the field's density, taken as a running maximum with decay,
    ema <- max(decay * ema, sigma(a random point in the cell)),
and a bit: occupied = ema > threshold. Renders drop the samples in unoccupied cells before the
field runs with gradients (`render.volume.plan_samples`).

Unlike nerfacc, which after its warm-up re-reads the occupied cells and a random quarter of the
others, every update here reads every cell. So a cell that some step fills (through the MLP or a
hash collision, since an empty cell gets no rendering gradient of its own) is marked occupied at
the next update, at most `update_every` steps later, whatever its history: the max takes the
new density at once. Before `warmup_steps` every cell counts as occupied.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..config import OccupancyConfig

CELLS_PER_CHUNK = 1 << 18  # density queries per chunk of an update


class OccupancyGrid:
    def __init__(self, cfg: OccupancyConfig, bound: float, device: torch.device | str = "cpu"):
        self.cfg, self.bound = cfg, float(bound)
        n = cfg.resolution**3
        self.density = torch.zeros(n, device=device)  # the EMA per cell, x-major: index = (i*res + j)*res + k
        self.occupied = torch.ones(n, dtype=torch.bool, device=device)
        self.last_update = -1  # step of the last update; -1: none yet (all cells occupied)

    def cell_index(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Flat cell index [N] (long) of world points [N,3], and whether the point is in the box [N]."""
        res = self.cfg.resolution
        ijk = ((points / self.bound + 1) * (0.5 * res)).floor().long()
        inside = ((ijk >= 0) & (ijk < res)).all(dim=-1)
        ijk = ijk.clamp(0, res - 1)
        return (ijk[:, 0] * res + ijk[:, 1]) * res + ijk[:, 2], inside

    def occupied_at(self, points: Tensor) -> Tensor:
        """[N] bool: the point lies in the box and in an occupied cell."""
        index, inside = self.cell_index(points)
        return inside & self.occupied[index]

    def cell_points(self, index: Tensor, jitter: Tensor) -> Tensor:
        """World points [M,3] in cells `index` [M], at `jitter` [M,3] in [0,1) within each cell."""
        res = self.cfg.resolution
        ijk = torch.stack([index // (res * res), (index // res) % res, index % res], dim=-1)
        return ((ijk.to(jitter.dtype) + jitter) / res * 2 - 1) * self.bound

    @torch.no_grad()
    def update(self, density_fn: Callable[[Tensor], Tensor], step: int, generator: torch.Generator | None = None) -> None:
        """Read the density at one random point of every cell; fold it into the EMA and the bits."""
        device = self.density.device
        n = self.density.shape[0]
        fresh = torch.empty_like(self.density)
        for start in range(0, n, CELLS_PER_CHUNK):
            index = torch.arange(start, min(start + CELLS_PER_CHUNK, n), device=device)
            gen_device = generator.device if generator is not None else device
            jitter = torch.rand(len(index), 3, generator=generator, device=gen_device).to(device)
            fresh[start:start + len(index)] = density_fn(self.cell_points(index, jitter)).float()
        torch.maximum(self.density * self.cfg.decay, fresh, out=self.density)
        self.occupied = self.density > self.cfg.threshold
        self.last_update = step

    def maybe_update(self, density_fn: Callable[[Tensor], Tensor], step: int,
                     generator: torch.Generator | None = None) -> bool:
        """Update when warm-up is over and update_every steps have passed since the last update."""
        if step < self.cfg.warmup_steps:
            return False
        if self.last_update >= 0 and step - self.last_update < self.cfg.update_every:
            return False
        self.update(density_fn, step, generator)
        return True

    @property
    def occupied_fraction(self) -> float:
        return float(self.occupied.float().mean())

    # -- checkpoint state ---------------------------------------------------------------------

    def tensors(self) -> dict[str, Tensor]:
        return {"density": self.density, "occupied": self.occupied,
                "last_update": torch.tensor(self.last_update, dtype=torch.long)}

    def load_tensors(self, tensors: dict[str, Tensor]) -> None:
        device = self.density.device
        if tensors["density"].shape != self.density.shape:
            raise ValueError(f"occupancy grid of {tensors['density'].numel()} cells, expected {self.density.numel()}")
        self.density = tensors["density"].to(device, torch.float32)
        self.occupied = tensors["occupied"].to(device, torch.bool)
        self.last_update = int(tensors["last_update"])
