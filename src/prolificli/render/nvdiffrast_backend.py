"""The nvdiffrast rasterizer (Laine et al. 2020) behind the same interface as `raster.py`.

CUDA only, imported when `render.backend: nvdiffrast` is chosen. Conventions translated here:
our cameras look along -z (OpenGL), so a standard perspective matrix applies, except that clip
y is negated: nvdiffrast's row 0 is clip y = -1, ours is the top of the image. Rasterizing is
symmetric in winding (nvdiffrast culls nothing), so the flip changes no visibility.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..cameras import Cameras
from ..config import ConfigError
from .raster import to_camera

NEAR, FAR = 1e-2, 1e2  # clip planes; the toy and paper cameras sit 1-3 units from the object
_contexts: dict[torch.device, object] = {}


def require(device: torch.device) -> None:
    try:
        import nvdiffrast.torch  # noqa: F401  (CUDA extension: only when this backend is chosen)
    except Exception as error:  # ImportError, or a failed JIT build of its kernels
        raise ConfigError(f"render.backend nvdiffrast needs the nvdiffrast package ({error}); "
                          "use render.backend: torch") from None
    if device.type != "cuda":
        raise ConfigError(f"render.backend nvdiffrast runs on CUDA only, the mesh is on {device}; "
                          "use render.backend: torch")


def _context(device: torch.device):
    import nvdiffrast.torch as dr

    if device not in _contexts:
        _contexts[device] = dr.RasterizeCudaContext(device=device)
    return _contexts[device]


def clip_space(vertices: Tensor, cameras: Cameras) -> Tensor:
    """World [N,3] -> homogeneous clip coordinates [B,N,4], row 0 of the image at the top."""
    camera = to_camera(vertices, cameras)  # [B,N,3]
    focal = 1 / torch.tan(0.5 * cameras.fovy.to(vertices.dtype))[:, None]  # NDC units, square images
    x, y, z = camera.unbind(-1)
    a, b = -(FAR + NEAR) / (FAR - NEAR), -2 * FAR * NEAR / (FAR - NEAR)
    return torch.stack([focal * x, -focal * y, a * z + b, -z], dim=-1)


@dataclass
class NvdiffrastRasterization:
    rast: Tensor  # [B,H,W,4]: (u, v, z/w, triangle id + 1), the last 0 on background
    clip: Tensor  # [B,N,4]
    faces: Tensor  # [F,3] int32
    depth: Tensor  # [B,H,W]

    @property
    def face_id(self) -> Tensor:
        return self.rast[..., 3].long() - 1

    def interpolate(self, values: Tensor, faces: Tensor) -> Tensor:
        import nvdiffrast.torch as dr

        values = values[None] if values.dim() == 2 else values  # broadcast over the batch
        out, _ = dr.interpolate(values.float().contiguous(), self.rast, faces.int().contiguous())
        return out

    def antialias(self, image: Tensor) -> Tensor:
        import nvdiffrast.torch as dr

        return dr.antialias(image.float().contiguous(), self.rast, self.clip, self.faces)


def rasterize(vertices: Tensor, faces: Tensor, cameras: Cameras, height: int, width: int) -> NvdiffrastRasterization:
    import nvdiffrast.torch as dr

    clip = clip_space(vertices.float(), cameras).contiguous()
    tri = faces.int().contiguous()
    rast, _ = dr.rasterize(_context(vertices.device), clip, tri, resolution=[height, width])
    view_depth, _ = dr.interpolate((-to_camera(vertices.float(), cameras)[..., 2:]).contiguous(), rast, tri)
    return NvdiffrastRasterization(rast, clip, tri, view_depth[..., 0])
