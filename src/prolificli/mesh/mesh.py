"""A triangle mesh as two tensors, with the few operations the mesh stages need."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


class MeshError(ValueError):
    """A mesh that cannot be read or used; the message is shown to the user as it is."""


def face_neighbors(faces: Tensor) -> Tensor:
    """[F,3]: the face across edge k = (corner k, corner k+1) of each face, -1 on an open border."""
    n = int(faces.max()) + 1 if len(faces) else 0
    edges = torch.stack([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], dim=1)  # [F,3,2]
    keys = (edges.amin(-1) * n + edges.amax(-1)).reshape(-1)
    order = torch.argsort(keys)
    same = keys[order][1:] == keys[order][:-1]
    first, second = order[:-1][same], order[1:][same]
    neighbors = torch.full_like(keys, -1)
    neighbors[first] = second // 3
    neighbors[second] = first // 3
    return neighbors.view(-1, 3)


@dataclass
class Mesh:
    vertices: Tensor  # [N,3]
    faces: Tensor  # [F,3] long, counter-clockwise seen from outside
    colors: Tensor | None = None  # [N,3] in [0,1]
    _neighbors: Tensor | None = field(default=None, repr=False, compare=False)

    def face_neighbors(self) -> Tensor:
        """[F,3] the face across each edge (-1 on a border); computed once per mesh."""
        if self._neighbors is None:
            self._neighbors = face_neighbors(self.faces)
        return self._neighbors

    def face_normals(self) -> Tensor:
        a, b, c = (self.vertices[self.faces[:, k]] for k in range(3))
        return torch.nn.functional.normalize(torch.linalg.cross(b - a, c - a), dim=-1)

    def vertex_normals(self) -> Tensor:
        """Area-weighted average of the adjacent faces' normals."""
        a, b, c = (self.vertices[self.faces[:, k]] for k in range(3))
        weighted = torch.linalg.cross(b - a, c - a)  # length = twice the area
        normals = torch.zeros_like(self.vertices)
        for k in range(3):
            normals = normals.index_add(0, self.faces[:, k], weighted)
        return torch.nn.functional.normalize(normals, dim=-1)

    def edges(self) -> Tensor:
        """Unique undirected edges [E,2]."""
        e = torch.sort(torch.cat([self.faces[:, [0, 1]], self.faces[:, [1, 2]], self.faces[:, [2, 0]]]), dim=1).values
        n = len(self.vertices)
        keys = torch.unique(e[:, 0] * n + e[:, 1])  # 1-D keys: far faster than unique(dim=0)
        return torch.stack([keys // n, keys % n], dim=1)

    def to_trimesh(self):
        import trimesh

        colors = None
        if self.colors is not None:
            colors = (self.colors.detach().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        return trimesh.Trimesh(self.vertices.detach().cpu().numpy(), self.faces.cpu().numpy(),
                               vertex_colors=colors, process=False)

    def detach(self) -> Mesh:
        return Mesh(self.vertices.detach(), self.faces, None if self.colors is None else self.colors.detach())


def load_mesh(path: Path) -> Mesh:
    """Any mesh trimesh reads (OBJ, PLY, GLB, STL, ...), scenes merged into one mesh."""
    import trimesh

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise MeshError(f"mesh file not found: {path}")
    try:
        loaded = trimesh.load(path, force="mesh", process=True)
    except Exception as exc:  # trimesh raises many kinds for bad files
        raise MeshError(f"cannot read mesh {path}: {exc}") from None
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise MeshError(f"{path} holds no triangles")
    return Mesh(torch.tensor(np.asarray(loaded.vertices), dtype=torch.float32),
                torch.tensor(np.asarray(loaded.faces), dtype=torch.long))


def normal_consistency(mesh: Mesh) -> Tensor:
    """Mean of 1 - cos(angle) between the normals of faces sharing an edge."""
    neighbors = mesh.face_neighbors()
    normals = mesh.face_normals()
    face, edge = torch.nonzero(neighbors >= 0, as_tuple=True)
    other = neighbors[face, edge]
    pair = face < other  # each shared edge once
    cos = (normals[face[pair]] * normals[other[pair]]).sum(-1)
    return (1 - cos).mean() if len(cos) else mesh.vertices.new_zeros(())


def laplacian_smoothness(mesh: Mesh) -> Tensor:
    """Mean squared distance of each vertex from the average of its neighbours (uniform Laplacian)."""
    edges = mesh.edges()
    if len(edges) == 0:
        return mesh.vertices.new_zeros(())
    v = mesh.vertices
    total = torch.zeros_like(v).index_add(0, edges[:, 0], v[edges[:, 1]]).index_add(0, edges[:, 1], v[edges[:, 0]])
    degree = torch.zeros(len(v), device=v.device, dtype=v.dtype)
    degree = degree.index_add(0, edges[:, 0], torch.ones_like(edges[:, 0], dtype=v.dtype))
    degree = degree.index_add(0, edges[:, 1], torch.ones_like(edges[:, 1], dtype=v.dtype))
    used = degree > 0
    offset = v[used] - total[used] / degree[used, None]
    return (offset ** 2).sum(-1).mean()


OBJECT_RADIUS = 0.5  # an external mesh is scaled to this bounding-box half-diagonal (the NeRF init's blob)


def fit_to_object_box(mesh: Mesh) -> tuple[Mesh, torch.Tensor, float]:
    """Centre the bounding box at the origin and scale its half-diagonal to OBJECT_RADIUS."""
    lo, hi = mesh.vertices.min(0).values, mesh.vertices.max(0).values
    centre, radius = (lo + hi) / 2, float((hi - lo).norm() / 2)
    if radius <= 0:
        raise MeshError("the mesh has no extent (all vertices coincide)")
    scale = OBJECT_RADIUS / radius
    return Mesh((mesh.vertices - centre) * scale, mesh.faces), centre, scale
