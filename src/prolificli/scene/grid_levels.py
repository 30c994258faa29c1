"""The hash grid's levels: how many cells each has and where its rows sit in the shared table.

The one layout that the PyTorch lookup (hashgrid.py) and the Triton kernels (hashgrid_triton.py)
both read, so neither imports the other for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import HashGridConfig

# tiny-cuda-nn's primes; the first is 1 so that x alone keeps coherent memory access
HASH_PRIME_Y = 2654435761
HASH_PRIME_Z = 805459861


@dataclass(frozen=True)
class GridLevel:
    resolution: int  # cells per axis; vertices 0..resolution
    offset: int  # first row of this level in the shared table
    size: int  # rows of this level: (resolution+1)^3 if dense, else the hash table size
    hashed: bool


def grid_levels(cfg: HashGridConfig) -> list[GridLevel]:
    table_size = 2**cfg.log2_hashmap_size
    levels, offset = [], 0
    for level in range(cfg.n_levels):
        resolution = math.floor(cfg.base_resolution * cfg.per_level_scale**level)
        n_vertices = (resolution + 1) ** 3
        hashed = n_vertices > table_size
        size = table_size if hashed else n_vertices
        levels.append(GridLevel(resolution, offset, size, hashed))
        offset += size
    return levels
