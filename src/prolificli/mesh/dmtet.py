"""DMTet (Shen et al. 2021): a surface as the zero level set of an SDF on a deformable tet grid.

The parameters are one SDF value and one offset per grid vertex. The offset is bounded to half a
cell by a tanh, so a vertex can slide to sharpen features but never cross its neighbours. The
mesh is re-extracted by marching tetrahedra at every evaluation and is differentiable in both.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .marching_tets import marching_tetrahedra
from .mesh import Mesh
from .tets import TetGrid


class DMTet(nn.Module):
    def __init__(self, grid: TetGrid, sdf: Tensor, deformation: Tensor | None = None):
        super().__init__()
        self.grid = grid
        self.register_buffer("lattice", grid.vertices(sdf.device), persistent=False)
        self.sdf = nn.Parameter(sdf.detach().clone().float())
        offsets = torch.zeros_like(self.lattice) if deformation is None else deformation.detach().clone().float()
        self.deformation = nn.Parameter(offsets)

    def vertices(self) -> Tensor:
        return self.lattice + 0.5 * self.grid.cell * torch.tanh(self.deformation)

    def mesh(self) -> Mesh:
        tets = self.grid.surface_tets(self.sdf.detach() < 0)
        points, faces = marching_tetrahedra(self.vertices(), tets, self.sdf)
        return Mesh(points, faces)

    # -- what a checkpoint holds: the grid's geometry goes with the tensors ---------------------

    def tensors(self) -> dict[str, Tensor]:
        return {"sdf": self.sdf.detach(), "deformation": self.deformation.detach(),
                "grid.cells": torch.tensor(self.grid.cells), "grid.origin": self.grid.origin,
                "grid.cell": torch.tensor(self.grid.cell)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> DMTet:
        grid = TetGrid(tuple(tensors["grid.cells"].tolist()), tensors["grid.origin"], float(tensors["grid.cell"]))
        return cls(grid, tensors["sdf"], tensors["deformation"])
