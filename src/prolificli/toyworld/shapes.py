"""The toy world's objects: six shapes x six colours with analytic signed distances.

Every object fits the NeRF stage's object-centric setup (inside a radius ~0.5 of the origin, in
the [-1, 1]^3 box). It is rendered by the project's own volume renderer from a sharp density
made from its signed distance, shaded by Lambert's law under a light fixed in world space plus
ambient. That appearance is view-independent, so an albedo-only NeRF can represent it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from torch import Tensor, nn

SHAPES = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid")
COLOURS = {
    "red": (0.85, 0.12, 0.10),
    "green": (0.15, 0.70, 0.20),
    "blue": (0.12, 0.25, 0.85),
    "yellow": (0.95, 0.85, 0.10),
    "orange": (0.98, 0.50, 0.05),
    "purple": (0.55, 0.15, 0.75),
}
LIGHT_DIRECTION = (0.45, 0.3, 0.84)  # world space (z up): from the front-right, above
AMBIENT = 0.35
BASE_Z = -0.4  # where flat-bottomed shapes stand
TOP_Z = 0.45  # apex of the cone and pyramid
# The shapes below are written at "unit" size (about 0.45 across the radius) and scaled by this,
# so that from the closest, narrowest training camera (distance 1.0, fovy 40 deg: a half-height
# of 0.36 at the origin) the whole object stays in view.
SCALE = 0.7


def _length(*parts: Tensor) -> Tensor:
    return torch.sqrt(sum(p * p for p in parts))


def _half_space_pair(q: Tensor, z: Tensor, base_half_width: float) -> Tensor:
    """Signed distance to the slanted side through (base_half_width, BASE_Z) and (0, TOP_Z),
    in the (q, z) half-plane: the side of a cone (q radial) or a pyramid face (q along x or y)."""
    nq, nz = TOP_Z - BASE_Z, base_half_width  # normal of the side line
    norm = math.hypot(nq, nz)
    return (nq * q + nz * z - nq * base_half_width - nz * BASE_Z) / norm


def signed_distance(shape: str, x: Tensor) -> Tensor:
    """Signed distance (negative inside) of `shape` at points x [N,3]; exact on the surface, a
    bound elsewhere for the cone and pyramid (max of face distances), which is all a sharp
    density needs."""
    return SCALE * _unit_signed_distance(shape, x / SCALE)


def _unit_signed_distance(shape: str, x: Tensor) -> Tensor:
    px, py, pz = x.unbind(-1)
    if shape == "sphere":
        return _length(px, py, pz) - 0.42
    if shape == "cube":
        d = x.abs() - 0.33
        outside = _length(*d.clamp(min=0).unbind(-1))
        return outside + d.max(dim=-1).values.clamp(max=0)
    if shape == "cylinder":
        dq = _length(px, py) - 0.32
        dz = pz.abs() - 0.40
        return _length(dq.clamp(min=0), dz.clamp(min=0)) + torch.maximum(dq, dz).clamp(max=0)
    if shape == "cone":
        side = _half_space_pair(_length(px, py), pz, 0.42)
        return torch.maximum(side, BASE_Z - pz)
    if shape == "torus":
        return _length(_length(px, py) - 0.30, pz) - 0.13
    if shape == "pyramid":
        faces = [_half_space_pair(q, pz, 0.40) for q in (px, -px, py, -py)]
        return torch.stack(faces + [BASE_Z - pz], dim=-1).max(dim=-1).values
    raise ValueError(f"unknown shape {shape!r}; the toy world has {', '.join(SHAPES)}")


def ground_truth_mesh(shape: str) -> trimesh.Trimesh:
    """A triangle mesh of the same object (for Chamfer distance and volume IoU)."""
    mesh = _unit_mesh(shape)
    mesh.apply_scale(SCALE)
    return mesh


def _unit_mesh(shape: str) -> trimesh.Trimesh:
    c = trimesh.creation
    if shape == "sphere":
        return c.icosphere(subdivisions=4, radius=0.42)
    if shape == "cube":
        return c.box(extents=(0.66, 0.66, 0.66))
    if shape == "cylinder":
        return c.cylinder(radius=0.32, height=0.80, sections=64)
    if shape == "cone":
        mesh = c.cone(radius=0.42, height=TOP_Z - BASE_Z, sections=64)
        mesh.apply_translation((0, 0, BASE_Z))
        return mesh
    if shape == "torus":
        return c.torus(major_radius=0.30, minor_radius=0.13, major_sections=64, minor_sections=32)
    if shape == "pyramid":
        h = 0.40
        vertices = np.array([[-h, -h, BASE_Z], [h, -h, BASE_Z], [h, h, BASE_Z], [-h, h, BASE_Z], [0, 0, TOP_Z]])
        faces = np.array([[0, 2, 1], [0, 3, 2], [0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]])
        return trimesh.Trimesh(vertices, faces, process=True)
    raise ValueError(f"unknown shape {shape!r}")


@dataclass(frozen=True)
class ToyObject:
    shape: str
    colour: str

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape}"


def all_objects() -> list[ToyObject]:
    return [ToyObject(shape, colour) for shape in SHAPES for colour in COLOURS]


def parse_prompt(prompt: str) -> tuple[str | None, str | None]:
    """(shape, colour) named in a prompt such as "a red cube, front view"; None for what it leaves open."""
    words = prompt.lower().replace(",", " ").split()
    shape = next((w for w in words if w in SHAPES), None)
    colour = next((w for w in words if w in COLOURS), None)
    return shape, colour


class ToyObjectField(nn.Module):
    """A toy object as a radiance field for the volume renderer: sharp density from the signed
    distance, Lambert-shaded colour (fixed world light + ambient) as its albedo.

    Density = D sigmoid(-sdf / s). The optical depth collected outside the surface along a
    perpendicular ray is D s ln 2, so D s = 1 keeps the rendered silhouette on the true surface
    (a softer D s inflates it) while s stays small enough to be a surface."""

    def __init__(self, obj: ToyObject, sharpness: float = 0.002, max_density: float = 500.0, bound: float = 1.0):
        super().__init__()
        self.obj = obj
        self.sharpness = sharpness
        self.max_density = max_density
        self.bound = bound
        self.register_buffer("colour", torch.tensor(COLOURS[obj.colour]))
        light = torch.tensor(LIGHT_DIRECTION)
        self.register_buffer("light", light / light.norm())

    def density(self, x: Tensor) -> Tensor:
        return self.max_density * torch.sigmoid(-signed_distance(self.obj.shape, x) / self.sharpness)

    def normal(self, x: Tensor) -> Tensor:
        """Unit gradient of the signed distance by central differences (no autograd needed)."""
        h = 1e-3
        offsets = torch.eye(3, device=x.device, dtype=x.dtype) * h
        grads = [signed_distance(self.obj.shape, x + o) - signed_distance(self.obj.shape, x - o) for o in offsets]
        g = torch.stack(grads, dim=-1)
        return g / g.norm(dim=-1, keepdim=True).clamp(min=1e-8)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        lambert = (self.normal(x) @ self.light).clamp(min=0)
        shade = AMBIENT + (1 - AMBIENT) * lambert
        return self.density(x), (self.colour * shade[:, None]).clamp(0, 1)
