"""gsplat (nerfstudio's CUDA rasterizer, `pip install gsplat`) behind render/splat.py's interface.

Chosen only by `render.backend: gsplat` on CUDA tensors; imported only then (it compiles its CUDA
code at first use where nvcc exists). Conventions translated here:
- gsplat's cameras are OpenCV's (looking along +z, y down): viewmat = inverse(c2w diag(1,-1,-1,1)),
  with K = [[f, 0, W/2], [0, f, H/2], [0, 0, 1]] (its pixel centres are at +0.5, as ours);
- "RGB+D" composites the view-space depth as a fourth channel, as our z feature; the depth along
  each pixel's ray is that times |d| (render/splat.py);
- eps2d is our low_pass; its alpha cut (1/255), clamp (0.99) and stop (1e-4) are our defaults,
  which this backend therefore requires.
Not yet verified on a GPU: tests/test_splat.py compares it with the torch rasterizer where it
imports with CUDA.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cameras import Cameras, pixel_directions
from ..config import SplatRenderConfig
from .splat import SplatOutput

GSPLAT_FIXED = {"min_alpha": 1.0 / 255.0, "max_alpha": 0.99, "stop_transmittance": 1e-4}


def gsplat_available() -> bool:
    """gsplat imports and a CUDA GPU is there (checked first: no import without one)."""
    if not torch.cuda.is_available():
        return False
    try:
        import gsplat  # noqa: F401
    except Exception:
        return False
    return True


def render_gaussians_gsplat(means: Tensor, log_scales: Tensor, quaternions: Tensor, opacity_logits: Tensor,
                            colors: Tensor, background, cameras: Cameras, height: int, width: int,
                            cfg: SplatRenderConfig, background_color: Tensor | None = None) -> SplatOutput:
    try:
        from gsplat import rasterization
    except ImportError as exc:
        raise RuntimeError("render backend 'gsplat' needs `pip install gsplat` (and a CUDA GPU); "
                           "set gaussians.render.backend=torch") from exc
    if not means.is_cuda:
        raise RuntimeError("render backend 'gsplat' needs CUDA tensors; set gaussians.render.backend=torch")
    for key, value in GSPLAT_FIXED.items():
        if abs(getattr(cfg, key) - value) > 1e-12:
            raise RuntimeError(f"gsplat fixes {key} at {value}; set gaussians.render.{key}={value} or backend=torch")
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], device=means.device, dtype=means.dtype))
    viewmats = torch.linalg.inv(cameras.c2w.to(means.dtype) @ flip)
    focal = cameras.focal(height).to(means.dtype)
    ks = torch.zeros(len(cameras), 3, 3, device=means.device, dtype=means.dtype)
    ks[:, 0, 0], ks[:, 1, 1] = focal, focal
    ks[:, 0, 2], ks[:, 1, 2], ks[:, 2, 2] = width / 2, height / 2, 1
    image, alpha, meta = rasterization(
        means, quaternions / quaternions.norm(dim=-1, keepdim=True), log_scales.exp(), torch.sigmoid(opacity_logits),
        colors, viewmats, ks, width, height, near_plane=cfg.near, eps2d=cfg.low_pass, packed=False,
        tile_size=cfg.tile_size, render_mode="RGB+D")
    rgb, z = image[..., :3], image[..., 3:4]
    directions = pixel_directions(focal, height, width)
    if background_color is not None:
        back = background_color.to(means.dtype)[:, None, None, :]
    else:
        world = torch.einsum("bij,bhwj->bhwi", cameras.c2w[:, :3, :3].to(means.dtype), directions)
        back = background(world).to(means.dtype)
    radii = meta["radii"]
    drawn = (radii > 0).all(-1) if radii.dim() == 3 else radii > 0
    means2d = meta["means2d"]
    return SplatOutput(rgb + (1 - alpha) * back, alpha, z * directions.norm(dim=-1, keepdim=True),
                       pairs=int(meta.get("isect_ids", torch.empty(0)).numel()), means2d=means2d, drawn=drawn)
