"""Which diffusion timesteps a distillation step looks at, and how much each one counts.

ProlificDreamer's two-stage anneal (Sec. 4.2, Appendix F): t ~ U(0.02, 0.98) for the first
`anneal_step` steps, then t ~ U(0.02, 0.50). Large t shapes the coarse layout early; restricting
to small t later refines detail instead of re-deciding the layout. Fractions map to integer
DDPM timesteps as round(fraction * T), inclusive at both ends, like the official code's
`randint(min_step, max_step + 1)` with min_step 20, max_step 980 (later 500) for T = 1000.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import GuidanceConfig
from .base import sample_timesteps


class TimestepSchedule:
    def __init__(self, cfg: GuidanceConfig, num_train_timesteps: int):
        self.cfg = cfg
        self.num_train_timesteps = num_train_timesteps
        for step in (0, cfg.anneal_step):
            low, high = self.t_range(step)
            if not 0 <= low <= high <= num_train_timesteps - 1:
                raise ValueError(
                    f"guidance timestep range [{low}, {high}] at step {step} is empty or outside "
                    f"[0, {num_train_timesteps - 1}]: check t_min, t_max, t_max_annealed"
                )

    def _to_timestep(self, fraction: float) -> int:
        return round(fraction * self.num_train_timesteps)

    def t_range(self, step: int) -> tuple[int, int]:
        """Inclusive integer bounds of t at optimisation step `step` (0-based; annealed from anneal_step on)."""
        t_max = self.cfg.t_max if step < self.cfg.anneal_step else self.cfg.t_max_annealed
        return self._to_timestep(self.cfg.t_min), self._to_timestep(t_max)

    def sample(
        self,
        step: int,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        low, high = self.t_range(step)
        return sample_timesteps(low, high, batch, torch.device(device), generator)


def weight(prior, t: Tensor, kind: str) -> Tensor:
    """w(t) as [B,1,1,1] float32: "sigma2" is sigma_t^2 = 1 - alphabar_t (Appendix F), "uniform" is 1."""
    alphas_cumprod = prior.alphas_cumprod.to(device=t.device, dtype=torch.float32)
    if kind == "sigma2":
        w = 1.0 - alphas_cumprod[t]
    elif kind == "uniform":
        w = torch.ones(t.shape, device=t.device, dtype=torch.float32)
    else:
        raise ValueError(f"unknown weighting '{kind}' (expected 'sigma2' or 'uniform')")
    return w.view(-1, 1, 1, 1)
