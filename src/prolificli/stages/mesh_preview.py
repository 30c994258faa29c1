"""Preview images of a mesh for the mesh stages: albedo (or grey) and normals around the orbit."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..cameras import evaluation_orbit
from ..config import MeshRenderConfig, Recipe
from ..mesh.mesh import Mesh
from ..render.mesh import normal_image, render_mesh, surface_colors


@torch.no_grad()
def preview_grid(mesh: Mesh, recipe: Recipe, *, resolution: int = 128, views: int = 4,
                 color_fn: Callable[[Tensor], Tensor] | None = None) -> np.ndarray:
    """Two rows, `views` azimuths each: colour on white, camera-space normals on white. uint8 [2H, vW, 3]."""
    cameras = evaluation_orbit(recipe.camera, views).to(mesh.vertices.device)
    cfg = MeshRenderConfig(backend="torch")
    out = render_mesh(mesh, cameras, resolution, cfg)
    white = torch.ones_like(out.position)
    if color_fn is not None:
        color = surface_colors(out, color_fn)
    elif mesh.colors is not None:
        color = out.interpolate(mesh.colors)
    else:  # grey, lit from the camera
        view = -torch.nn.functional.normalize(out.position - cameras.c2w[:, None, None, :3, 3], dim=-1)
        color = (0.2 + 0.7 * (out.normal * view).sum(-1, keepdim=True).clamp(min=0)).expand(-1, -1, -1, 3)
    rows = [out.composite(color, white), out.composite(normal_image(out, cameras), white)]
    grid = torch.cat([torch.cat(list(row.clamp(0, 1)), dim=1) for row in rows], dim=0)
    return (grid.cpu().numpy() * 255).round().astype(np.uint8)
