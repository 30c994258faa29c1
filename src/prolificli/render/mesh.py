"""Render a triangle mesh: opacity, normals, positions and any per-point colour, antialiased.

Two rasterizers sit behind `render_mesh`: the pure-PyTorch one (`raster.py`, runs anywhere,
tested everywhere) and nvdiffrast (`nvdiffrast_backend.py`, CUDA only, imported lazily when
chosen). A `MeshRender` keeps its backend's rasterization so that `interpolate` and
`antialias` afterwards go through the same backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import Tensor

from ..cameras import Cameras
from ..config import MeshRenderConfig
from ..mesh.mesh import Mesh
from . import raster


class Rasterization(Protocol):
    """What a backend hands back: per-pixel triangle ids, and the two operations that need them."""

    face_id: Tensor  # [B,H,W] long, -1 on background
    depth: Tensor  # [B,H,W] along the view axis, differentiable

    def interpolate(self, values: Tensor, faces: Tensor) -> Tensor: ...
    def antialias(self, image: Tensor) -> Tensor: ...


@dataclass
class TorchRasterization:
    rast: raster.Rasterized
    faces: Tensor
    neighbors: Tensor

    @property
    def face_id(self) -> Tensor:
        return self.rast.face_id

    @property
    def depth(self) -> Tensor:
        return self.rast.depth

    def interpolate(self, values: Tensor, faces: Tensor) -> Tensor:
        return raster.interpolate(values, faces, self.rast)

    def antialias(self, image: Tensor) -> Tensor:
        return raster.antialias(image, self.rast, self.faces, self.neighbors)


@dataclass
class MeshRender:
    opacity: Tensor  # [B,H,W,1], antialiased coverage
    normal: Tensor  # [B,H,W,3] world-space unit normals (zero on background)
    position: Tensor  # [B,H,W,3] world-space surface points (zero on background)
    depth: Tensor  # [B,H,W,1] along the view axis
    mask: Tensor  # [B,H,W] bool, pixel centre on the surface
    raster: Rasterization
    faces: Tensor
    antialiased: bool

    def interpolate(self, values: Tensor, faces: Tensor | None = None) -> Tensor:
        """Per-vertex values [N,C] at every pixel [B,H,W,C]. `faces` may index another vertex
        array with the same faces in the same order (a UV-unwrapped copy of the mesh)."""
        return self.raster.interpolate(values, self.faces if faces is None else faces)

    def composite(self, color: Tensor, background: Tensor) -> Tensor:
        """color [B,H,W,3] on the surface over background [B,H,W,3], silhouettes antialiased."""
        hard = torch.where(self.mask[..., None], color, background)
        return self.raster.antialias(hard) if self.antialiased else hard


def rasterize(mesh: Mesh, cameras: Cameras, resolution: int, cfg: MeshRenderConfig) -> Rasterization:
    """`auto` is the PyTorch rasterizer until the nvdiffrast adapter has been checked on hardware."""
    if cfg.backend == "nvdiffrast":
        from . import nvdiffrast_backend

        nvdiffrast_backend.require(mesh.vertices.device)  # a clear ConfigError, never a silent swap
        return nvdiffrast_backend.rasterize(mesh.vertices, mesh.faces, cameras, resolution, resolution)
    rast = raster.rasterize(mesh.vertices, mesh.faces, cameras, resolution, resolution)
    return TorchRasterization(rast, mesh.faces, mesh.face_neighbors())


def render_mesh(mesh: Mesh, cameras: Cameras, resolution: int, cfg: MeshRenderConfig) -> MeshRender:
    rast = rasterize(mesh, cameras, resolution, cfg)
    mask = rast.face_id >= 0
    coverage = mask[..., None].to(mesh.vertices.dtype)
    opacity = rast.antialias(coverage) if cfg.antialias else coverage
    normals = rast.interpolate(mesh.vertex_normals(), mesh.faces)
    normals = torch.nn.functional.normalize(normals, dim=-1) * mask[..., None]
    position = rast.interpolate(mesh.vertices, mesh.faces)
    return MeshRender(opacity, normals, position, rast.depth[..., None], mask, rast, mesh.faces, cfg.antialias)


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


def normal_colors(world_normals: Tensor, cameras: Cameras) -> Tensor:
    """World normals [B,H,W,3] as camera-space colours, (n + 1) / 2 (facing the camera: light blue)."""
    return (torch.einsum("bji,bhwj->bhwi", cameras.c2w[:, :3, :3], world_normals) + 1) / 2


def normal_image(render: MeshRender, cameras: Cameras) -> Tensor:
    return normal_colors(render.normal, cameras)
