"""Cameras: the training distribution p(c), evaluation orbits, rays, and the view-dependent prompt.

Conventions (shared by the whole package): the world is z-up and right-handed; `c2w` is a 4x4
camera-to-world matrix in the OpenGL camera convention (the camera looks along its local -z, local
+y is up, +x is right). A camera at distance d, elevation e and azimuth a sits at
(d cos e cos a, d cos e sin a, d sin e) and looks at the origin; azimuth 0 (camera on +x) is the
front of the object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .config import CameraConfig


@dataclass
class Cameras:
    """A batch of B pinhole cameras with square pixels."""

    c2w: Tensor  # [B,4,4]
    fovy: Tensor  # [B] vertical field of view, radians
    distance: Tensor  # [B]
    elevation_deg: Tensor  # [B]
    azimuth_deg: Tensor  # [B]

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def to(self, device: torch.device | str) -> Cameras:
        return Cameras(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __getitem__(self, index: int | slice | Tensor | Sequence[int]) -> Cameras:
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)  # keep the batch dimension
        return Cameras(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def embedding(self) -> Tensor:
        """The camera condition of VSD's score model: the flattened c2w, [B,16]."""
        return self.c2w.flatten(1)

    def focal(self, height: int) -> Tensor:
        """Focal length in pixels [B] for images `height` pixels tall."""
        return 0.5 * height / torch.tan(0.5 * self.fovy.to(self.c2w.dtype))

    def rays(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """World-space rays through the pixel centres: origins and unit directions, both [B,H,W,3].

        Row 0 is the top of the image. The focal length in pixels follows from fovy and the height;
        pixels are square, so the horizontal field of view follows from the aspect ratio.
        """
        directions_camera = pixel_directions(self.focal(height), height, width)  # [B,H,W,3]
        rotation = self.c2w[:, :3, :3]
        directions = torch.einsum("bij,bhwj->bhwi", rotation, directions_camera)
        directions = directions / directions.norm(dim=-1, keepdim=True)
        origins = self.c2w[:, None, None, :3, 3].expand_as(directions)
        return origins, directions


def pixel_directions(focal: Tensor, height: int, width: int) -> Tensor:
    """Camera-frame directions [B,H,W,3] through the pixel centres, with z = -1 (OpenGL: the camera
    looks along -z; row 0 is the top of the image); focal [B] in pixels. Not normalised."""
    j = torch.arange(width, device=focal.device, dtype=focal.dtype) + 0.5  # pixel-centre columns
    i = torch.arange(height, device=focal.device, dtype=focal.dtype) + 0.5  # pixel-centre rows
    u = (j - 0.5 * width)[None, None, :] / focal[:, None, None]
    v = (0.5 * height - i)[None, :, None] / focal[:, None, None]
    u, v = torch.broadcast_tensors(u, v)
    return torch.stack([u, v, -torch.ones_like(u)], dim=-1)


def look_at(
    positions: Tensor,
    target: Sequence[float] | Tensor = (0.0, 0.0, 0.0),
    up: Sequence[float] | Tensor = (0.0, 0.0, 1.0),
) -> Tensor:
    """c2w [B,4,4] for cameras at `positions` [B,3] looking at `target`, with `up` as the image up."""
    dtype, device = positions.dtype, positions.device
    target = torch.as_tensor(target, dtype=dtype, device=device).expand_as(positions)
    up = torch.as_tensor(up, dtype=dtype, device=device).expand_as(positions)
    forward = target - positions
    forward = forward / forward.norm(dim=-1, keepdim=True)
    right = torch.cross(forward, up, dim=-1)
    # looking straight along `up` (elevation +-90 deg) leaves the roll undefined: take world +y as up
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    fallback_up = torch.tensor([0.0, 1.0, 0.0], dtype=dtype, device=device).expand_as(positions)
    right = torch.where(degenerate, torch.cross(forward, fallback_up, dim=-1), right)
    right = right / right.norm(dim=-1, keepdim=True)
    camera_up = torch.cross(right, forward, dim=-1)
    c2w = torch.zeros(positions.shape[0], 4, 4, dtype=dtype, device=device)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = camera_up
    c2w[:, :3, 2] = -forward  # the camera looks along its local -z
    c2w[:, :3, 3] = positions
    c2w[:, 3, 3] = 1.0
    return c2w


def spherical_positions(distance: Tensor, elevation_deg: Tensor, azimuth_deg: Tensor) -> Tensor:
    elevation = torch.deg2rad(elevation_deg)
    azimuth = torch.deg2rad(azimuth_deg)
    return torch.stack(
        [
            distance * torch.cos(elevation) * torch.cos(azimuth),
            distance * torch.cos(elevation) * torch.sin(azimuth),
            distance * torch.sin(elevation),
        ],
        dim=-1,
    )


def make_cameras(distance: Tensor, fovy_deg: Tensor, elevation_deg: Tensor, azimuth_deg: Tensor) -> Cameras:
    """Cameras on spheres around the origin, looking at it."""
    c2w = look_at(spherical_positions(distance, elevation_deg, azimuth_deg))
    return Cameras(
        c2w=c2w,
        fovy=torch.deg2rad(fovy_deg),
        distance=distance,
        elevation_deg=elevation_deg,
        azimuth_deg=azimuth_deg,
    )


def sample_cameras(cfg: CameraConfig, batch: int, generator: torch.Generator | None = None) -> Cameras:
    """B cameras from p(c): distance, fovy, elevation and azimuth each uniform in its config range."""

    def uniform(bounds: tuple[float, float]) -> Tensor:
        low, high = bounds
        return low + (high - low) * torch.rand(batch, generator=generator)

    distance = uniform(cfg.distance)
    fovy_deg = uniform(cfg.fovy_deg)
    elevation_deg = uniform(cfg.elevation_deg)
    azimuth_deg = uniform(cfg.azimuth_deg)
    return make_cameras(distance, fovy_deg, elevation_deg, azimuth_deg)


def orbit_cameras(
    n: int, elevation_deg: float, distance: float, fovy_deg: float, azimuth_start_deg: float = 0.0
) -> Cameras:
    """n cameras evenly spaced in azimuth around the z axis (a turntable), azimuth wrapped to [-180, 180)."""
    azimuth = azimuth_start_deg + 360.0 * torch.arange(n, dtype=torch.float32) / n
    azimuth = torch.remainder(azimuth + 180.0, 360.0) - 180.0
    full = lambda value: torch.full((n,), float(value))
    return make_cameras(full(distance), full(fovy_deg), full(elevation_deg), azimuth)


def evaluation_orbit(cfg: CameraConfig, views: int) -> Cameras:
    """`views` cameras around the recipe's evaluation orbit (eval_elevation/distance/fovy): the
    previews, the extract threshold's views and the toy world's measurements all look from it."""
    return orbit_cameras(views, cfg.eval_elevation_deg, cfg.eval_distance, cfg.eval_fovy_deg)


def view_suffix(cameras: Cameras, cfg: CameraConfig) -> list[str]:
    """DreamFusion's view-dependent prompting: which side of the object each camera sees."""
    suffixes = []
    for elevation, azimuth in zip(cameras.elevation_deg.tolist(), cameras.azimuth_deg.tolist()):
        # wrap so that e.g. azimuth 350 counts as -10 (front)
        azimuth = (azimuth + 180.0) % 360.0 - 180.0
        if elevation > cfg.overhead_elevation_deg:
            suffixes.append("overhead view")
        elif abs(azimuth) < cfg.front_azimuth_deg:
            suffixes.append("front view")
        elif abs(azimuth) > cfg.back_azimuth_deg:
            suffixes.append("back view")
        else:
            suffixes.append("side view")
    return suffixes


def view_prompts(prompt: str, cameras: Cameras, cfg: CameraConfig) -> list[str]:
    if not cfg.view_dependent_prompt:
        return [prompt] * len(cameras)
    return [f"{prompt}, {suffix}" for suffix in view_suffix(cameras, cfg)]
