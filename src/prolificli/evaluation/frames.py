"""Render any stage's artifact of a run from given cameras: rgb, normals, depth, opacity.

    nerf      a NeRF particle, volume-rendered over its own background, or a Gaussian-splat
              particle, rasterized over it
    extract   the extracted mesh, with the NeRF's colours it carries as vertex colours
    geometry  the refined mesh, likewise
    texture   the exported, textured GLB: what a user takes away from the run

Meshes are shown on white. Normals are camera-space, as colours (n + 1) / 2; a NeRF's come from
its depth map, a mesh's from its vertex normals. Depth is the distance along the view axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..cameras import Cameras
from ..config import MeshRenderConfig
from ..mesh.mesh import Mesh
from ..rundir.directory import ArtifactError, RunDir

STAGES = ("nerf", "extract", "geometry", "texture")


@dataclass
class Frames:
    rgb: Tensor  # [N,H,W,3] in [0,1]
    normal: Tensor  # [N,H,W,3] camera-space normals as colours, white where nothing is hit
    depth: Tensor  # [N,H,W,1] along the view axis, 0 where nothing is hit
    opacity: Tensor  # [N,H,W,1]

    def __len__(self) -> int:
        return self.rgb.shape[0]


def complete_stages(run: RunDir) -> list[str]:
    return [name for name in STAGES if (run.stage(name).manifest or {}).get("status") == "complete"]


def latest_stage(run: RunDir) -> str:
    done = complete_stages(run)
    if not done:
        raise ArtifactError(f"{run.path} has no complete stage to render; run `prolific nerf` first")
    return done[-1]


def _view_axis(cameras: Cameras) -> Tensor:
    return -cameras.c2w[:, :3, 2]  # [B,3]: cameras look along their -z


def normals_from_depth(points: Tensor, mask: Tensor) -> Tensor:
    """World normals [B,H,W,3] of surface points [B,H,W,3] by central differences across the image,
    turned towards the camera by the caller; zero where a neighbour is missing."""
    dx = torch.zeros_like(points)
    dy = torch.zeros_like(points)
    dx[:, :, 1:-1] = points[:, :, 2:] - points[:, :, :-2]
    dy[:, 1:-1] = points[:, 2:] - points[:, :-2]
    normal = torch.nn.functional.normalize(torch.linalg.cross(dy, dx), dim=-1)
    valid = mask.clone()
    valid[:, :, 1:-1] &= mask[:, :, 2:] & mask[:, :, :-2]
    valid[:, 1:-1] &= mask[:, 2:] & mask[:, :-2]
    valid[:, [0, -1]] = False
    valid[:, :, [0, -1]] = False
    return normal * valid[..., None]


@torch.no_grad()
def render_nerf(field, background, recipe, cameras: Cameras, resolution: int) -> Frames:
    from ..render.volume import render

    out = render(field, background, cameras, resolution, resolution, recipe.nerf.render, stratified=False)
    return _frames_from_depth(out, cameras, resolution)


@torch.no_grad()
def render_splats(cloud, background, recipe, cameras: Cameras, resolution: int) -> Frames:
    return _frames_from_depth(cloud.render(background, cameras, resolution, recipe.gaussians.render), cameras,
                              resolution)


def _frames_from_depth(out, cameras: Cameras, resolution: int) -> Frames:
    """Frames of a render with rgb, opacity and depth along the ray (a NeRF's or splats'): normals
    from the depth map."""
    from ..render.mesh import normal_colors

    origins, directions = cameras.rays(resolution, resolution)
    opaque = out.opacity[..., 0] > 0.5
    distance = out.depth / out.opacity.clamp(min=1e-6)  # expected distance of the surface along the ray
    normal = normals_from_depth(origins + distance * directions, opaque)
    facing = (normal * directions).sum(-1, keepdim=True)
    normal = torch.where(facing > 0, -normal, normal)  # towards the camera
    colour = torch.where(opaque[..., None] & (normal.norm(dim=-1, keepdim=True) > 0),
                         normal_colors(normal, cameras), torch.ones_like(normal))
    depth = distance * (directions * _view_axis(cameras)[:, None, None, :]).sum(-1, keepdim=True)
    return Frames(out.rgb.clamp(0, 1), colour, depth * opaque[..., None], out.opacity)


@torch.no_grad()
def render_mesh_frames(mesh: Mesh, cameras: Cameras, resolution: int, *, uvs: Tensor | None = None,
                       uv_faces: Tensor | None = None, texture: Tensor | None = None) -> Frames:
    from ..render.mesh import normal_image, render_mesh, sample_texture

    out = render_mesh(mesh, cameras, resolution, MeshRenderConfig(backend="torch"))
    white = torch.ones_like(out.position)
    if texture is not None:
        color = sample_texture(out.interpolate(uvs, uv_faces), texture)
    elif mesh.colors is not None:
        color = out.interpolate(mesh.colors)
    else:
        color = torch.full_like(out.position, 0.7)
    rgb = out.composite(color, white).clamp(0, 1)
    normal = out.composite(normal_image(out, cameras), white)
    return Frames(rgb, normal, out.depth * out.mask[..., None], out.opacity)


def _concat(parts: list[Frames]) -> Frames:
    return Frames(*(torch.cat([getattr(p, name) for p in parts]) for name in ("rgb", "normal", "depth", "opacity")))


def renderer(run: RunDir, stage: str, particle: int = 0) -> Callable[[Cameras, int], Frames]:
    """Open a stage's artifact once; the returned function renders it from any cameras."""
    from ..rundir.outputs import GaussiansArtifact, NerfArtifact, TexturedArtifact, open_artifact

    run.stage(stage).require_complete(stage)
    artifact = open_artifact(run, stage)
    if isinstance(artifact, NerfArtifact):
        field, background = artifact.particle(particle)
        return lambda cameras, resolution: render_nerf(field, background, artifact.recipe, cameras, resolution)
    if isinstance(artifact, GaussiansArtifact):
        cloud, background = artifact.particle(particle)
        return lambda cameras, resolution: render_splats(cloud, background, artifact.recipe, cameras, resolution)
    if isinstance(artifact, TexturedArtifact):
        return lambda cameras, resolution: render_mesh_frames(artifact.mesh, cameras, resolution, uvs=artifact.uvs,
                                                              uv_faces=artifact.mesh.faces, texture=artifact.texture)
    mesh = artifact.exported()  # a mesh stage's
    return lambda cameras, resolution: render_mesh_frames(mesh, cameras, resolution)


def render_all(render: Callable[[Cameras, int], Frames], cameras: Cameras, resolution: int, *, batch: int = 8,
               advance: Callable[[int], None] | None = None) -> Frames:
    parts = []
    for start in range(0, len(cameras), batch):
        parts.append(render(cameras[start : start + batch], resolution))
        if advance is not None:
            advance(len(parts[-1]))
    return _concat(parts)
