"""Tetrahedral grids generated on the fly (no shipped Quartet files).

A box of nx x ny x nz cubic cells, each split into the 6 tetrahedra of its Kuhn (Freudenthal)
decomposition: tetrahedron p = the path 000 -> e_p0 -> e_p0+e_p1 -> 111 for each permutation p of
the axes. Every cell uses the same main diagonal, so neighbouring cells split their shared faces
along the same diagonal: the grid is conforming and marching tetrahedra on it yields watertight
meshes. Every tetrahedron is stored with positive orientation, which the triangle table relies on.

A 256^3 grid has 100M tetrahedra (3 GB of int64 indices), so `TetGrid` never materialises them
all: a cell whose 8 corners agree in sign holds no surface, and `surface_tets` builds only the
tetrahedra of the cells that do.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

_PATHS = []  # (corner offsets of the 4 vertices) per tetrahedron of a cell, positively oriented
for _perm in itertools.permutations(range(3)):
    _corner, _path = [0, 0, 0], [(0, 0, 0)]
    for _axis in _perm:
        _corner[_axis] = 1
        _path.append(tuple(_corner))
    _odd = sum(_perm[i] > _perm[j] for i in range(3) for j in range(i + 1, 3)) % 2
    _PATHS.append([_path[i] for i in ((0, 2, 1, 3) if _odd else (0, 1, 2, 3))])
CELL_TETS = torch.tensor(_PATHS)  # [6,4,3]


class TetGrid:
    """The lattice of (nx+1)(ny+1)(nz+1) vertices from `origin` with spacing `cell`."""

    def __init__(self, cells: tuple[int, int, int], origin: Tensor | tuple[float, float, float], cell: float):
        if min(cells) < 1:
            raise ValueError(f"a tet grid needs at least one cell per axis, got {cells}")
        self.cells = tuple(int(c) for c in cells)
        self.origin = torch.as_tensor(origin, dtype=torch.float32)
        self.cell = float(cell)
        self.shape = tuple(c + 1 for c in self.cells)  # vertices per axis

    @classmethod
    def cube(cls, resolution: int, bound: float = 1.0) -> TetGrid:
        return cls((resolution,) * 3, (-bound,) * 3, 2 * bound / resolution)

    @property
    def n_vertices(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    def vertices(self, device: str | torch.device = "cpu") -> Tensor:
        axes = [torch.arange(n, device=device, dtype=torch.float32) * self.cell + float(o)
                for n, o in zip(self.shape, self.origin)]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)

    def vertex_index(self, ijk: Tensor) -> Tensor:
        _, ny, nz = self.shape
        return (ijk[..., 0] * ny + ijk[..., 1]) * nz + ijk[..., 2]

    def tets(self, cells: Tensor | None = None) -> Tensor:
        """[6K,4] vertex indices of the tetrahedra of `cells` ([K,3] cell coordinates; all by default)."""
        if cells is None:
            ranges = [torch.arange(c) for c in self.cells]
            cells = torch.stack(torch.meshgrid(*ranges, indexing="ij"), dim=-1).reshape(-1, 3)
        corners = cells[:, None, None, :] + CELL_TETS.to(cells.device)[None]  # [K,6,4,3]
        return self.vertex_index(corners).reshape(-1, 4)

    def surface_tets(self, inside: Tensor) -> Tensor:
        """The tetrahedra of every cell whose corners are not all inside or all outside."""
        grid = inside.reshape(self.shape)
        nx, ny, nz = self.cells
        any_inside = torch.zeros(self.cells, dtype=torch.bool, device=inside.device)
        all_inside = torch.ones(self.cells, dtype=torch.bool, device=inside.device)
        for dx, dy, dz in itertools.product((0, 1), repeat=3):
            corner = grid[dx : dx + nx, dy : dy + ny, dz : dz + nz]
            any_inside |= corner
            all_inside &= corner
        return self.tets(torch.nonzero(any_inside & ~all_inside))
