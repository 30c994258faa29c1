"""Tetrahedral grids generated on the fly (no shipped Quartet files).

A cube grid of `resolution`^3 cells, each split into the 6 tetrahedra of its Kuhn (Freudenthal)
decomposition: tetrahedron p = the path 000 -> e_p0 -> e_p0+e_p1 -> 111 for each permutation p of
the axes. Every cell uses the same main diagonal, so neighbouring cells split their shared faces
along the same diagonal: the grid is conforming and marching tetrahedra on it yields watertight
meshes. Every tetrahedron is stored with positive orientation, which the triangle table relies on.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor


def tet_grid(resolution: int, bound: float = 1.0, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """Vertices [(R+1)^3, 3] spanning [-bound, bound]^3 and tetrahedra [6 R^3, 4] (int64 indices)."""
    if resolution < 1:
        raise ValueError(f"tet grid resolution must be >= 1, got {resolution}")
    r = resolution
    axis = torch.linspace(-bound, bound, r + 1, device=device)
    vertices = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)

    def index(i: Tensor, j: Tensor, k: Tensor) -> Tensor:
        return (i * (r + 1) + j) * (r + 1) + k

    cells = torch.arange(r, device=device)
    ci, cj, ck = (c.reshape(-1) for c in torch.meshgrid(cells, cells, cells, indexing="ij"))
    tets = []
    for perm in itertools.permutations(range(3)):
        corner = [0, 0, 0]
        path = [index(ci, cj, ck)]
        for axis_id in perm:
            corner[axis_id] = 1
            path.append(index(ci + corner[0], cj + corner[1], ck + corner[2]))
        tet = torch.stack(path, dim=-1)
        if _permutation_parity(perm):  # odd permutations give negatively oriented tets: swap two
            tet = tet[:, [0, 2, 1, 3]]
        tets.append(tet)
    return vertices, torch.cat(tets, dim=0)


def _permutation_parity(perm: tuple[int, ...]) -> int:
    inversions = sum(perm[i] > perm[j] for i in range(len(perm)) for j in range(i + 1, len(perm)))
    return inversions % 2


def signed_volumes(vertices: Tensor, tets: Tensor) -> Tensor:
    """Six times the signed volume of each tetrahedron (positive: (b-a, c-a, d-a) right-handed)."""
    a, b, c, d = (vertices[tets[:, i]] for i in range(4))
    return torch.linalg.det(torch.stack([b - a, c - a, d - a], dim=-1))
