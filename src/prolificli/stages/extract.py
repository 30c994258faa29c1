"""`prolific extract`: a DMTet tet grid and a watertight mesh from a NeRF particle's density.

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

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import Tensor

from ..artifacts import ArtifactError, RunDir, save_checkpoint
from ..cameras import evaluation_orbit
from ..config import ExtractConfig, Recipe, VolumeRenderConfig, to_dict
from ..files import write_png
from ..mesh.dmtet import DMTet
from ..mesh.export import save_ply
from ..mesh.mesh import Mesh
from ..mesh.tets import TetGrid
from ..render.volume import intersect_box, render_rays
from ..scene.nerf import albedo_across_surface
from .common import clear_stage
from .mesh_preview import preview_grid

STAGE = "extract"
PROBE_RESOLUTION = 96  # cells per side of the whole-field probe that finds the object
CHUNK = 1 << 18


@torch.no_grad()
def query(field, points: Tensor) -> Tensor:
    return torch.cat([field.density(points[i : i + CHUNK]) for i in range(0, len(points), CHUNK)])


@torch.no_grad()
def automatic_threshold(field, render_cfg: VolumeRenderConfig, recipe: Recipe, views: int = 8,
                        resolution: int = 48, samples: int = 192) -> float:
    """The density level whose surface has the NeRF's own silhouette.

    A ray meets the level set {density > tau} iff the largest density along it exceeds tau, so
    the mesh's silhouette for any tau is known from one march per ray. Choose tau to maximise the
    IoU between that silhouette and the pixels the NeRF renders with opacity > 1/2, over 8 views
    of the evaluation orbit. (A density read where the rays turn opaque would be biased to the
    spikes of a hazy, noisy NeRF: its level set would be porous and too small.)"""
    cameras = evaluation_orbit(recipe.camera, views)
    origins, directions = (t.reshape(-1, 3) for t in cameras.rays(resolution, resolution))
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
                    render_cfg: VolumeRenderConfig) -> Surface:
    """Everything `prolific extract` computes, for any field with .density(x) (and x in [-bound, bound]^3)."""
    from scipy import ndimage

    threshold = cfg.threshold if cfg.threshold is not None else automatic_threshold(field, render_cfg, recipe)
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


@dataclass
class ExtractResult:
    run_dir: Path
    mesh_path: Path
    vertices: int
    faces: int
    threshold: float
    seconds: float


def run(run_dir: Path, recipe: Recipe, *, force: bool = False, console: Console | None = None) -> ExtractResult:
    from .nerf import load_particles

    console = console or Console(stderr=True)
    run = RunDir.open(run_dir)
    stage = run.stage(STAGE)
    if stage.manifest is not None and not force:
        raise ArtifactError(f"{stage.path} already exists (status: {stage.manifest.get('status')}); "
                            "pass --force to extract again")
    clear_stage(stage)
    nerf_recipe, particles = load_particles(run.path)
    k = recipe.extract.particle
    if not 0 <= k < len(particles):
        raise ArtifactError(f"--particle {k}: the NeRF stage has {len(particles)} particle(s), 0..{len(particles) - 1}")
    field, _ = particles[k]

    tic = time.perf_counter()
    nerf_checkpoint = run.stage("nerf").checkpoint_dir
    stage.begin(to_dict(recipe), 1, inputs=[nerf_checkpoint])
    try:
        with console.status(f"extracting particle {k} on a {recipe.extract.resolution}-cell tet grid"):
            surface = extract_surface(field, nerf_recipe.nerf.field.bound, recipe.extract, recipe,
                                      nerf_recipe.nerf.render)
        if len(surface.mesh.faces) == 0:
            raise ArtifactError("the extracted mesh is empty after removing small pieces; lower --threshold")
        save_checkpoint(stage.checkpoint_dir, 0, surface.dmtet.tensors(), {},
                        extra={"stage": STAGE, "particle": k, "threshold": surface.threshold})
        mesh_path = save_ply(surface.mesh, stage.path / "mesh.ply")
        write_png(preview_grid(surface.mesh, recipe), stage.previews_dir / "latest.png")
        info = {"threshold": surface.threshold, "vertices": len(surface.mesh.vertices),
                "faces": len(surface.mesh.faces), "dropped_components": surface.dropped_components,
                "grid_cells": list(surface.dmtet.grid.cells), "cell": surface.dmtet.grid.cell}
        stage.log_metrics(1, info)
    except BaseException as exc:
        stage.finish("failed", 0, error=f"{type(exc).__name__}: {exc}")
        raise
    stage.finish("complete", 1, outputs=["checkpoint/weights.safetensors", "mesh.ply", "previews/latest.png"])
    seconds = time.perf_counter() - tic
    console.print(f"[dim]threshold {surface.threshold:.3g}, {info['faces']} faces, "
                  f"{surface.dropped_components} floating piece(s) dropped, {seconds:.1f} s[/]")
    return ExtractResult(run.path, mesh_path, info["vertices"], info["faces"], surface.threshold, seconds)
