"""What the first stage's 3D representations share (NeRF and Gaussian-splat particles): the render
size schedule, the background draw, the regularisers on the rendered opacity (all set in the
recipe's nerf section) and the preview grid."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..cameras import Cameras, evaluation_orbit
from ..config import Recipe


def resolution_at(recipe: Recipe, step: int) -> int:
    """Render size at `step`: the base resolution, raised at each milestone (64 -> 512 at 5k)."""
    resolution = recipe.nerf.resolution
    for milestone, value in sorted(recipe.nerf.resolution_milestones):
        if step >= milestone:
            resolution = value
    return resolution


def opaque_weight(recipe: Recipe, step: int) -> float:
    cfg = recipe.nerf
    return cfg.lambda_opaque_final if step >= cfg.opaque_start_step else cfg.lambda_opaque


def opacity_regularization(opacity: torch.Tensor, recipe: Recipe, step: int) -> tuple[torch.Tensor, dict]:
    """lambda_sparsity * sparsity + the opaque weight at `step` * opaque, for opacity [B,H,W,1]."""
    # sparsity: a smooth L1 on opacity discourages floaters and haze
    sparsity = torch.sqrt(opacity ** 2 + 0.01).mean()
    # opaque: binary entropy of opacity, pushing it to 0 or 1 late in training (clean extraction)
    o = opacity.clamp(1e-3, 1 - 1e-3)
    opaque = -(o * torch.log(o) + (1 - o) * torch.log(1 - o)).mean()
    loss = recipe.nerf.lambda_sparsity * sparsity + opaque_weight(recipe, step) * opaque
    return loss, {"sparsity": sparsity.detach(), "opaque": opaque.detach()}


def random_background_color(recipe: Recipe, batch: int, generator: torch.Generator,
                            tensor_generator: torch.Generator, device: torch.device) -> torch.Tensor | None:
    """A random solid background colour [B,3] with probability background.random_color_prob, else
    None (the particle's own background): random solid backgrounds stop the particle from painting
    the object into its background."""
    if float(torch.rand((), generator=generator)) < recipe.nerf.background.random_color_prob:
        return torch.rand(batch, 3, generator=tensor_generator, device=tensor_generator.device).to(device)
    return None


@torch.no_grad()
def preview_grid(render_rgb: Callable[[int, Cameras], torch.Tensor], n_particles: int, recipe: Recipe,
                 resolution: int, device: torch.device, views: int = 4) -> np.ndarray:
    """A grid image: one row per particle, `views` azimuths around the evaluation orbit side by side.
    render_rgb(i, cameras) gives particle i's rgb [views,R,R,3]."""
    cameras = evaluation_orbit(recipe.camera, views).to(device)
    rows = [torch.cat(list(render_rgb(i, cameras)), dim=1) for i in range(n_particles)]
    grid = torch.cat(rows, dim=0).clamp(0, 1)
    return (grid.cpu().numpy() * 255).round().astype(np.uint8)
