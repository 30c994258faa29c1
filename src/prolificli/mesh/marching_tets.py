"""Marching tetrahedra in pure PyTorch, differentiable in the SDF values and vertex positions (DMTet).

Convention: sdf < 0 inside. A tetrahedron whose corners disagree in sign is cut by one triangle
(one corner alone on its side) or a quad split in two (two against two); each cut point sits where
the linear interpolation of the SDF along an edge crosses zero, so its position carries gradients
to both end values: p = a + s_a / (s_a - s_b) (b - a). Shared edges are cut once, so the mesh is
watertight on a conforming grid. The triangle table is derived below, not copied: for each of the
16 inside/outside patterns of a positively oriented tetrahedron, the cut is oriented so that its
normal points from the inside corners to the outside ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def _triangle_table() -> list[list[tuple[int, int, int]]]:
    corners = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])  # positive orientation
    edge_id = {edge: i for i, edge in enumerate(EDGES)}
    table = []
    for case in range(16):
        inside = [bool(case >> v & 1) for v in range(4)]
        ins = [v for v in range(4) if inside[v]]
        outs = [v for v in range(4) if not inside[v]]
        if len(ins) in (0, 4):
            table.append([])
            continue

        def edge(u: int, v: int) -> int:
            return edge_id[(min(u, v), max(u, v))]

        if len(ins) == 1 or len(outs) == 1:
            lone, others = (ins[0], outs) if len(ins) == 1 else (outs[0], ins)
            polygons = [[edge(lone, o) for o in others]]
        else:  # two against two: the quad ac, ad, bd, bc (consecutive edges share a corner)
            (a, b), (c, d) = ins, outs
            quad = [edge(a, c), edge(a, d), edge(b, d), edge(b, c)]
            polygons = [[quad[0], quad[1], quad[2]], [quad[0], quad[2], quad[3]]]
        outward = corners[outs].mean(0) - corners[ins].mean(0)
        triangles = []
        for tri in polygons:
            p = torch.stack([corners[list(EDGES[e])].mean(0) for e in tri])
            normal = torch.linalg.cross(p[1] - p[0], p[2] - p[0])
            triangles.append(tuple(tri) if float(normal @ outward) > 0 else (tri[0], tri[2], tri[1]))
        table.append(triangles)
    return table


_TABLE = _triangle_table()
# [16, 2, 3] local edge ids, -1 where a case has fewer than two triangles
TRIANGLE_TABLE = torch.full((16, 2, 3), -1, dtype=torch.long)
for _case, _triangles in enumerate(_TABLE):
    for _i, _tri in enumerate(_triangles):
        TRIANGLE_TABLE[_case, _i] = torch.tensor(_tri)


def marching_tetrahedra(vertices: Tensor, tets: Tensor, sdf: Tensor) -> tuple[Tensor, Tensor]:
    """The zero level set of `sdf` (per vertex) on a tetrahedral grid: (vertices [N,3], faces [F,3])."""
    device = vertices.device
    inside = sdf < 0
    corner_inside = inside[tets]
    count = corner_inside.sum(1)
    cut = (count > 0) & (count < 4)
    tets, corner_inside = tets[cut], corner_inside[cut]
    if len(tets) == 0:
        return vertices.new_zeros(0, 3), torch.zeros(0, 3, dtype=torch.long, device=device)

    local = torch.tensor(EDGES, device=device)
    ends = tets[:, local]  # [T,6,2] global vertex ids
    ends = torch.sort(ends, dim=-1).values
    crossing = corner_inside[:, local[:, 0]] != corner_inside[:, local[:, 1]]  # [T,6]
    keys = ends[..., 0] * len(vertices) + ends[..., 1]
    unique_keys, inverse = torch.unique(keys[crossing], return_inverse=True)
    edge_vertex = torch.full(crossing.shape, -1, dtype=torch.long, device=device)
    edge_vertex[crossing] = inverse

    a, b = unique_keys // len(vertices), unique_keys % len(vertices)
    sa, sb = sdf[a], sdf[b]
    weight = (sa / (sa - sb)).unsqueeze(-1)
    points = vertices[a] + weight * (vertices[b] - vertices[a])

    case = (corner_inside.long() * torch.tensor([1, 2, 4, 8], device=device)).sum(1)
    triangles = TRIANGLE_TABLE.to(device)[case]  # [T,2,3] local edge ids
    present = triangles[..., 0] >= 0
    faces = torch.gather(edge_vertex, 1, triangles.clamp(min=0).reshape(len(tets), 6)).reshape(-1, 2, 3)
    return points, faces[present]
