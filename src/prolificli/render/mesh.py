"""Render a triangle mesh: opacity, normals, positions and any per-point colour, antialiased.

The pure-PyTorch rasterizer (`raster.py`) is the only backend so far; `auto` selects it. An
nvdiffrast adapter (the same three operations on the GPU) is planned, not written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..cameras import Cameras
from ..config import ConfigError, MeshRenderConfig
from ..mesh.mesh import Mesh
from . import raster


@dataclass
class MeshRender:
    opacity: Tensor  # [B,H,W,1], antialiased coverage
    normal: Tensor  # [B,H,W,3] world-space unit normals (zero on background)
    position: Tensor  # [B,H,W,3] world-space surface points (zero on background)
    depth: Tensor  # [B,H,W,1] along the view axis
    mask: Tensor  # [B,H,W] bool, pixel centre on the surface
    rast: raster.Rasterized

    def composite(self, color: Tensor, background: Tensor, mesh: Mesh, cfg: MeshRenderConfig) -> Tensor:
        """color [B,H,W,3] on the surface over background [B,H,W,3], silhouettes antialiased."""
        hard = torch.where(self.mask[..., None], color, background)
        return raster.antialias(hard, self.rast, mesh.faces, mesh.face_neighbors()) if cfg.antialias else hard


def render_mesh(mesh: Mesh, cameras: Cameras, resolution: int, cfg: MeshRenderConfig) -> MeshRender:
    if cfg.backend == "nvdiffrast":
        # not silently replaced by the torch path: the user asked for something we do not have yet
        raise ConfigError("the nvdiffrast mesh backend is not implemented yet; use render.backend: torch (or auto)")
    rast = raster.rasterize(mesh.vertices, mesh.faces, cameras, resolution, resolution)
    mask = rast.mask
    coverage = mask[..., None].to(mesh.vertices.dtype)
    opacity = raster.antialias(coverage, rast, mesh.faces, mesh.face_neighbors()) if cfg.antialias else coverage
    normals = raster.interpolate(mesh.vertex_normals(), mesh.faces, rast)
    normals = torch.nn.functional.normalize(normals, dim=-1) * mask[..., None]
    position = raster.interpolate(mesh.vertices, mesh.faces, rast)
    return MeshRender(opacity, normals, position, rast.depth[..., None], mask, rast)


def surface_colors(render: MeshRender, color_fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Evaluate a colour field at the visible surface points only: [B,H,W,3]."""
    out = render.position.new_zeros(render.position.shape)
    if render.mask.any():
        out = out.index_put((render.mask,), color_fn(render.position[render.mask]))
    return out


def sample_texture(uv: Tensor, texture: Tensor) -> Tensor:
    """Bilinear lookup of texture [T,T,3] (row 0 = v 1, the OBJ/glTF convention) at uv [B,H,W,2]."""
    grid = torch.stack([2 * uv[..., 0] - 1, 1 - 2 * uv[..., 1]], dim=-1)  # grid_sample: y = -1 is row 0
    image = texture.permute(2, 0, 1)[None].expand(uv.shape[0], -1, -1, -1)
    out = torch.nn.functional.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.permute(0, 2, 3, 1)


def normal_image(render: MeshRender, cameras: Cameras) -> Tensor:
    """Camera-space normals as colours, (n + 1) / 2 (a surface facing the camera is light blue)."""
    rotation = cameras.c2w[:, :3, :3]
    camera_normals = torch.einsum("bji,bhwj->bhwi", rotation, render.normal)
    return (camera_normals + 1) / 2
