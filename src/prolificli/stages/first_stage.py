"""What the first stage's 3D representations share (NeRF and Gaussian-splat particles): the render
size schedule and the regularisers on the rendered opacity, all set in the recipe's nerf section."""

from __future__ import annotations

import torch

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
