"""`prolific eval --geometry`: a run's surface against the toy world's true object.

Chamfer distance (in % of the object's longest side) between the run's surface and the true
mesh, and volume IoU on a 64^3 lattice around both: the true inside from the analytic signed
distance, ours from the run's watertight mesh, voxelised and filled. A NeRF stage's surface is
what `prolific extract` would make of it (computed in memory, nothing written), NeRF or splats.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import trimesh

from ..mesh.mesh import Mesh
from ..rundir.directory import RunDir

LATTICE = 64


def surface_of(run: RunDir, stage: str, particle: int = 0) -> Mesh:
    from ..rundir.outputs import open_first_stage, open_mesh, open_textured

    if stage == "texture":
        return open_textured(run).mesh
    if stage != "nerf":
        return open_mesh(run, stage).exported()
    from ..surface import first_stage_surface

    first = open_first_stage(run)
    return first_stage_surface(first, particle, replace(first.recipe.extract, particle=particle)).mesh


def volume_iou(mesh: trimesh.Trimesh, inside_truth, lo: np.ndarray, hi: np.ndarray, n: int = LATTICE) -> float:
    axes = [np.linspace(a, b, n) for a, b in zip(lo, hi)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    pitch = float((hi - lo).max()) / n
    ours = mesh.voxelized(pitch).fill().is_filled(points)
    truth = inside_truth(points)
    union = (ours | truth).sum()
    return float((ours & truth).sum() / union) if union else 1.0


def geometry_metrics(run: RunDir, stage: str, prompt: str, particle: int = 0) -> dict | None:
    """{"chamfer_pct", "volume_iou"} for a toy-world prompt that names a shape; None otherwise."""
    from ..toyworld.measures import chamfer_distance, object_size
    from ..toyworld.shapes import ground_truth_mesh, parse_prompt, signed_distance

    shape, _ = parse_prompt(prompt)
    if shape is None:
        return None
    mesh = surface_of(run, stage, particle)
    ours = trimesh.Trimesh(mesh.vertices.detach().cpu().numpy(), mesh.faces.cpu().numpy(), process=False)
    truth = ground_truth_mesh(shape)
    lo = np.minimum(ours.bounds[0], truth.bounds[0]) - 0.05
    hi = np.maximum(ours.bounds[1], truth.bounds[1]) + 0.05

    def inside_truth(points: np.ndarray) -> np.ndarray:
        return (signed_distance(shape, torch.tensor(points, dtype=torch.float32)) < 0).numpy()

    return {"chamfer_pct": 100 * chamfer_distance(ours, truth) / object_size(shape),
            "volume_iou": volume_iou(ours, inside_truth, lo, hi)}
