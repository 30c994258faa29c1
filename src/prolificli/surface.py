"""A NeRF's surface as a watertight mesh: what `prolific extract` computes, for any field with a
density. Also used by `eval --geometry` to measure a NeRF's surface.

    threshold  the density level of the surface: given, or measured where the NeRF draws its own
               silhouette (the level whose silhouette best matches the NeRF's opacity > 1/2)
    box        a probe of the whole field finds the object; the tet grid covers it tightly, so
               its `resolution` cells span the object, not the empty scene around it
    clean      inside grid points are grouped into connected pieces and pieces much smaller than
               the largest (floaters) are dropped before the mesh is made
    sdf        (threshold - density) / |grad density|, a first-order distance to the surface,
               clamped to a few cells: the geometry stage's learning rate is then in world units
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .cameras import Cameras, evaluation_orbit
from .config import ExtractConfig, Recipe, VolumeRenderConfig
from .mesh.dmtet import DMTet
from .mesh.mesh import Mesh
from .mesh.tets import TetGrid
from .render.volume import intersect_box, render_rays
from .rundir.directory import ArtifactError
from .scene.gaussians import GaussianCloud
from .scene.nerf import albedo_across_surface
from .scene.splat_field import SplatDensityField

OpacityFn = Callable[[Cameras, int], Tensor]  # (cameras, resolution) -> opacity [B,H,W(,1)]
PROBE_RESOLUTION = 96  # cells per side of the whole-field probe that finds the object
CHUNK = 1 << 18


@torch.no_grad()
def query(field, points: Tensor) -> Tensor:
    return torch.cat([field.density(points[i : i + CHUNK]) for i in range(0, len(points), CHUNK)])


@torch.no_grad()
def automatic_threshold(field, render_cfg: VolumeRenderConfig, recipe: Recipe, views: int = 8,
                        resolution: int = 48, samples: int = 192, own_opacity: OpacityFn | None = None) -> float:
    """The density level whose surface has the NeRF's own silhouette (or the one `own_opacity`
    renders: a splat particle's).

    A ray meets the level set {density > tau} iff the largest density along it exceeds tau, so
    the mesh's silhouette for any tau is known from one march per ray. Choose tau to maximise the
    IoU between that silhouette and the pixels the NeRF renders with opacity > 1/2, over 8 views
    of the evaluation orbit. (A density read where the rays turn opaque would be biased to the
    spikes of a hazy, noisy NeRF: its level set would be porous and too small.)"""
    cameras = evaluation_orbit(recipe.camera, views)
    origins, directions = (t.reshape(-1, 3) for t in cameras.rays(resolution, resolution))
    if own_opacity is not None:
        covered = own_opacity(cameras, resolution).reshape(-1) > 0.5  # [B,H,W] in the rays' order
    else:
        covered = render_rays(field, origins, directions, render_cfg, stratified=False)["opacity"][:, 0] > 0.5
    if not covered.any():
        raise ArtifactError("the NeRF renders nothing opaque from the evaluation orbit, so no surface "
                            "threshold can be measured; pass --threshold")
    t_near, t_far, hit = intersect_box(origins, directions, field.bound, render_cfg.near)
    fraction = (torch.arange(samples, dtype=origins.dtype) + 0.5) / samples
    t = t_near[:, None] + (t_far - t_near).clamp(min=0)[:, None] * fraction[None]
    peak = torch.cat([query(field, (origins[i:i + 1024, None, :] + t[i:i + 1024, :, None]
                                    * directions[i:i + 1024, None, :]).reshape(-1, 3)).reshape(-1, samples).amax(1)
                      for i in range(0, len(origins), 1024)])
    peak = torch.where(hit, peak, torch.zeros_like(peak))
    candidates = torch.linspace(0, float(peak.max()), 201)[1:]
    ious = torch.stack([((peak > tau) & covered).sum() / ((peak > tau) | covered).sum() for tau in candidates])
    best = torch.nonzero(ious >= ious.max() - 1e-6).squeeze(1)  # pixels are coarse: many levels tie
    return float(candidates[best[len(best) // 2]])


def _cells(extent: Tensor, cell: float) -> tuple[int, int, int]:
    return tuple(max(1, int(np.ceil(float(e) / cell))) for e in extent)


@dataclass
class Surface:
    dmtet: DMTet
    mesh: Mesh
    threshold: float
    dropped_components: int


@torch.no_grad()
def extract_surface(field, bound: float, cfg: ExtractConfig, recipe: Recipe,
                    render_cfg: VolumeRenderConfig, own_opacity: OpacityFn | None = None) -> Surface:
    """Everything `prolific extract` computes, for any field with .density(x) (and x in [-bound, bound]^3).
    own_opacity: how the particle renders its opacity, where it is not the field's volume render."""
    from scipy import ndimage

    threshold = cfg.threshold if cfg.threshold is not None else \
        automatic_threshold(field, render_cfg, recipe, own_opacity=own_opacity)
    probe = TetGrid.cube(PROBE_RESOLUTION, bound)
    probe_points = probe.vertices()
    density = query(field, probe_points)
    inside = density > threshold
    if not inside.any():
        raise ArtifactError(f"the level set is empty: the NeRF's density peaks at {float(density.max()):.3g}, "
                            f"below the threshold {threshold:.3g}; pass a lower --threshold")
    if inside.all():
        raise ArtifactError(f"the whole volume is denser than the threshold {threshold:.3g}; pass a higher --threshold")

    # a tight box around the object, with a margin of one probe cell plus margin_cells of the fine grid
    points = probe_points[inside]
    lo, hi = points.min(0).values - probe.cell, points.max(0).values + probe.cell
    cell = float((hi - lo).max()) / cfg.resolution
    lo = lo - cfg.margin_cells * cell
    grid = TetGrid(_cells(hi - lo + cfg.margin_cells * cell, cell), lo, cell)
    density = query(field, grid.vertices()).reshape(grid.shape)

    solid = (density > threshold).numpy()
    if not solid.any():  # the probe saw the object but it is thinner than a fine cell everywhere
        raise ArtifactError(f"no grid point is denser than the threshold {threshold:.3g}; pass a lower --threshold")
    labels, _ = ndimage.label(solid, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    small = np.flatnonzero(sizes < cfg.min_component * sizes.max()) + 1
    floaters = torch.from_numpy(np.isin(labels, small))

    gradient = torch.stack(torch.gradient(density, spacing=cell), dim=-1).norm(dim=-1)
    sdf = (threshold - density) / gradient.clamp(min=1e-6)
    sdf = sdf.clamp(-3 * cell, 3 * cell)
    sdf = torch.where(floaters, torch.full_like(sdf, cell), sdf)  # dropped pieces become outside
    dmtet = DMTet(grid, sdf.reshape(-1))
    mesh = dmtet.mesh().detach()
    normals = mesh.vertex_normals()
    albedo = torch.cat([albedo_across_surface(field, mesh.vertices[i : i + CHUNK // 16],
                                              normals[i : i + CHUNK // 16], 4 * cell)
                        for i in range(0, len(mesh.vertices), CHUNK // 16)]) if len(mesh.vertices) else None
    return Surface(dmtet, Mesh(mesh.vertices, mesh.faces, albedo), threshold, len(small))


def first_stage_field(first, particle: int):
    """Particle k of an opened first stage (outputs.open_first_stage) as a field with density(x)
    and (density, albedo)(x): the NeRF itself, or a splat particle's Gaussians summed into one
    (scene/splat_field.py)."""
    model, _ = first.particle(particle)
    if isinstance(model, GaussianCloud):
        return SplatDensityField(model, first.recipe.nerf.field.bound, first.recipe.gaussians.render.smoothing_3d)
    return model.requires_grad_(False)


def first_stage_surface(first, particle: int, cfg: ExtractConfig, recipe: Recipe | None = None) -> Surface:
    """extract_surface of particle k of an opened first stage: a NeRF's density, or a splat
    particle's with the threshold matched to the splats' own rendered silhouette. `recipe` gives
    the cameras of the threshold's views (the first stage's by default)."""
    model, background = first.particle(particle)
    field, recipe = first_stage_field(first, particle), recipe or first.recipe
    own_opacity = None
    if isinstance(model, GaussianCloud):
        def own_opacity(cameras: Cameras, resolution: int) -> Tensor:
            return model.render(background, cameras, resolution, first.recipe.gaussians.render).opacity

    return extract_surface(field, first.recipe.nerf.field.bound, cfg, recipe, first.recipe.nerf.render,
                           own_opacity=own_opacity)
