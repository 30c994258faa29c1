"""Reading back what the stages wrote: the one place where the trained NeRF (or 2D) particles
are loaded from a run, for the mesh stages, `render` and `eval` alike. The checkpoint keys are
the NeRF stage's: particle{i}.field.*, particle{i}.background.*, particle{i}.image.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .artifacts import ArtifactError, RunDir, load_checkpoint, prefixed
from .config import Recipe, stored_recipe
from .prior import load_prior
from .render.background import Background
from .scene.nerf import NeRFField


def complete_nerf_stage(run_dir: Path, representation: str) -> tuple[Recipe, dict[str, torch.Tensor], Path]:
    """The recipe and checkpoint tensors of a complete NeRF stage of the given representation."""
    stage = RunDir.open(run_dir).stage("nerf")
    recipe = stored_recipe(stage.require_complete("nerf")["config"])
    actual = recipe.scene.representation
    if actual != representation:
        kinds = {"nerf": "a NeRF run", "image": f"a 2D run, whose particles are images (in {stage.path / 'images'})"}
        raise ArtifactError(f"{stage.path} is {kinds[actual]}; this needs {kinds[representation].split(',')[0]}")
    return recipe, load_checkpoint(stage.checkpoint_dir).tensors, stage.path


def load_particles(run_dir: Path, device: str | torch.device = "cpu") -> tuple[Recipe, list[tuple[NeRFField, Background]]]:
    """The trained (field, background) of every particle of a complete NeRF stage."""
    recipe, tensors, _ = complete_nerf_stage(run_dir, "nerf")
    particles = []
    for i in range(recipe.nerf.particles):
        field, background = NeRFField(recipe.nerf.field), Background(recipe.nerf.background)
        field.load_state_dict(prefixed(tensors, f"particle{i}.field."))
        background.load_state_dict(prefixed(tensors, f"particle{i}.background."))
        particles.append((field.to(device).eval(), background.to(device).eval()))
    return recipe, particles


def load_images(run_dir: Path) -> tuple[Recipe, torch.Tensor]:
    """The particles [n,3,H,W] in [0,1] of a complete 2D run, decoded by its prior."""
    recipe, tensors, _ = complete_nerf_stage(run_dir, "image")
    x0 = torch.stack([tensors[f"particle{i}.image"] for i in range(recipe.nerf.particles)])
    with torch.no_grad():
        return recipe, load_prior(recipe.prior).decode(x0).cpu()
