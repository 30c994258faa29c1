"""A differentiable triangle rasterizer in pure PyTorch (the interface nvdiffrast offers).

    rast  = rasterize(vertices, faces, cameras, H, W)   which triangle each pixel centre sees
    attr  = interpolate(values, faces, rast)            perspective-correct vertex attributes
    image = antialias(image, rast, vertices, faces, cameras)   silhouette coverage, with gradients

Visibility (which triangle) is discrete and computed without gradients: every triangle's pixel
bounding box is enumerated, pixel centres inside it are tested with edge functions, and a z-buffer
keeps the nearest. The barycentrics of the winner are then recomputed differentiably by
intersecting the pixel's ray with the triangle (Moller-Trumbore), so gradients reach the vertices
through everything interpolated. Silhouettes, whose position a z-buffer cannot differentiate,
get their gradients from `antialias`, which blends across each pixel pair that straddles a
silhouette edge by how far along the pair the edge crosses (the analytic antialiasing of Laine et
al. 2020, simplified to the pair-wise blend).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..cameras import Cameras, pixel_directions
from ..mesh.mesh import face_neighbors

NEAR = 1e-3  # triangles with a vertex closer to the camera plane than this are not drawn


@dataclass
class Rasterized:
    face_id: Tensor  # [B,H,W] long, -1 where no triangle is hit
    bary: Tensor  # [B,H,W,3] perspective-correct barycentrics, differentiable in the vertices
    depth: Tensor  # [B,H,W] distance along the camera's view axis (0 on background), differentiable
    camera_vertices: Tensor  # [B,N,3] vertices in each camera's frame
    focal: Tensor  # [B] focal length in pixels

    @property
    def mask(self) -> Tensor:
        return self.face_id >= 0


def to_camera(vertices: Tensor, cameras: Cameras) -> Tensor:
    """World [N,3] -> camera frame [B,N,3] (OpenGL: looking along -z)."""
    rotation, origin = cameras.c2w[:, :3, :3], cameras.c2w[:, :3, 3]
    return torch.einsum("bji,bnj->bni", rotation, vertices[None] - origin[:, None])


def project(camera_vertices: Tensor, focal: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Camera frame -> pixel coordinates [B,N,2] (x right, y down; pixel centres at k + 0.5), depth [B,N]."""
    depth = -camera_vertices[..., 2]
    safe = depth.clamp(min=NEAR)
    x = 0.5 * width + focal[:, None] * camera_vertices[..., 0] / safe
    y = 0.5 * height - focal[:, None] * camera_vertices[..., 1] / safe
    return torch.stack([x, y], dim=-1), depth


def rasterize(vertices: Tensor, faces: Tensor, cameras: Cameras, height: int, width: int) -> Rasterized:
    focal = cameras.focal(height).to(vertices.dtype)
    camera_vertices = to_camera(vertices, cameras)
    face_id = _visible_faces(camera_vertices.detach(), faces, focal.detach(), height, width)
    bary, depth = _ray_barycentrics(camera_vertices, faces, face_id, focal, height, width)
    return Rasterized(face_id, bary, depth, camera_vertices, focal)


@torch.no_grad()
def _visible_faces(camera_vertices: Tensor, faces: Tensor, focal: Tensor, height: int, width: int) -> Tensor:
    batch, device = camera_vertices.shape[0], camera_vertices.device
    face_id = torch.full((batch, height, width), -1, dtype=torch.long, device=device)
    if len(faces) == 0:
        return face_id
    screen, depth = project(camera_vertices, focal, height, width)
    tri = screen[:, faces]  # [B,F,3,2]
    tri_depth = depth[:, faces]  # [B,F,3]
    drawable = (tri_depth > NEAR).all(-1)
    # pixel centres k + 0.5 inside the bounding box: k from ceil(min - 0.5) to floor(max - 0.5)
    lo = torch.ceil(tri.amin(2) - 0.5).clamp(min=0)
    hi = torch.floor(tri.amax(2) - 0.5)
    hi = torch.minimum(hi, torch.tensor([width - 1, height - 1], device=device, dtype=hi.dtype))
    extent = (hi - lo + 1).clamp(min=0).long()
    count = extent[..., 0] * extent[..., 1] * drawable
    b_idx, f_idx = torch.nonzero(count, as_tuple=True)
    n = count[b_idx, f_idx]
    if n.sum() == 0:
        return face_id
    owner = torch.repeat_interleave(torch.arange(len(n), device=device), n)
    local = torch.arange(int(n.sum()), device=device) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
    b, f = b_idx[owner], f_idx[owner]
    nx = extent[b, f, 0]
    col = lo[b, f, 0].long() + local % nx
    row = lo[b, f, 1].long() + local // nx

    p = torch.stack([col, row], dim=-1).to(tri.dtype) + 0.5
    a, bb, c = tri[b, f, 0], tri[b, f, 1], tri[b, f, 2]
    area = _cross2(bb - a, c - a)
    w0 = _cross2(bb - p, c - p) / area
    w1 = _cross2(c - p, a - p) / area
    w2 = 1 - w0 - w1
    inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0) & (area.abs() > 1e-12)
    z = tri_depth[b, f]
    inv_depth = w0 / z[:, 0] + w1 / z[:, 1] + w2 / z[:, 2]  # 1/z interpolates linearly in screen space
    b, f, row, col, inv_depth = b[inside], f[inside], row[inside], col[inside], inv_depth[inside]

    pixel = (b * height + row) * width + col
    nearest = torch.full((batch * height * width,), -float("inf"), device=device, dtype=inv_depth.dtype)
    nearest.scatter_reduce_(0, pixel, inv_depth, reduce="amax")  # largest 1/z = nearest
    winner = inv_depth >= nearest[pixel]
    flat = face_id.view(-1)
    flat.scatter_reduce_(0, pixel[winner], f[winner], reduce="amax")  # ties: the larger face id
    return face_id


def _cross2(u: Tensor, v: Tensor) -> Tensor:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _ray_barycentrics(camera_vertices: Tensor, faces: Tensor, face_id: Tensor, focal: Tensor,
                      height: int, width: int) -> tuple[Tensor, Tensor]:
    batch = camera_vertices.shape[0]
    bary = camera_vertices.new_zeros(batch, height, width, 3)
    depth = camera_vertices.new_zeros(batch, height, width)
    hit = face_id >= 0
    if not hit.any():
        return bary, depth
    b = torch.nonzero(hit, as_tuple=True)[0]
    d = pixel_directions(focal.to(camera_vertices.dtype), height, width)[hit]  # [K,3]
    v0, v1, v2 = (camera_vertices[b, faces[face_id[hit], k]] for k in range(3))
    e1, e2 = v1 - v0, v2 - v0
    pvec = torch.linalg.cross(d, e2)
    det = (e1 * pvec).sum(-1)
    tvec = -v0  # the ray starts at the camera centre, the origin of its frame
    qvec = torch.linalg.cross(tvec, e1)
    u = (tvec * pvec).sum(-1) / det
    v = (d * qvec).sum(-1) / det
    t = (e2 * qvec).sum(-1) / det  # d has z = -1, so t is the depth along the view axis
    bary = bary.index_put((hit,), torch.stack([1 - u - v, u, v], dim=-1))
    depth = depth.index_put((hit,), t)
    return bary, depth


def interpolate(values: Tensor, faces: Tensor, rast: Rasterized) -> Tensor:
    """Vertex attributes [N,C] (or per camera [B,N,C]) at every pixel [B,H,W,C]; zero on background."""
    batch, height, width = rast.face_id.shape
    if values.dim() == 2:
        values = values[None].expand(batch, -1, -1)
    out = values.new_zeros(batch, height, width, values.shape[-1])
    hit = rast.mask
    if not hit.any():
        return out
    b = torch.nonzero(hit, as_tuple=True)[0]
    corners = faces[rast.face_id[hit]]  # [K,3]
    w = rast.bary[hit]  # [K,3]
    picked = sum(w[:, k : k + 1] * values[b, corners[:, k]] for k in range(3))
    return out.index_put((hit,), picked)


def antialias(image: Tensor, rast: Rasterized, faces: Tensor, neighbors: Tensor | None = None) -> Tensor:
    """Blend [B,H,W,C] across silhouette edges by the fraction of each pixel pair they cover.

    For two neighbouring pixels that see different triangles, the nearer one's triangle T is the
    candidate occluder. If the segment between the two pixel centres crosses a silhouette edge of
    T (an edge on an open border, or whose neighbouring face turns the other way on screen) at
    fraction a from T's pixel, then the pixel whose area the edge cuts borrows |a - 1/2| of the
    other's colour. a depends on the projected vertices, so this is where a silhouette's position
    gets its gradient.
    """
    batch, height, width = rast.face_id.shape
    if len(faces) == 0 or not rast.mask.any():
        return image
    neighbors = face_neighbors(faces) if neighbors is None else neighbors
    screen, _ = project(rast.camera_vertices, rast.focal, height, width)  # [B,N,2], differentiable
    tri = screen[:, faces]  # [B,F,3,2]
    area = _cross2(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0]).detach()  # [B,F]
    depth = torch.where(rast.mask, rast.depth.detach(), torch.full_like(rast.depth, float("inf")))
    flat_image = image.reshape(batch * height * width, -1)
    delta = torch.zeros_like(flat_image)
    for dr, dc in ((0, 1), (1, 0)):
        rows, cols = torch.meshgrid(torch.arange(height - dr, device=image.device),
                                    torch.arange(width - dc, device=image.device), indexing="ij")
        id_p, id_q = rast.face_id[:, : height - dr, : width - dc], rast.face_id[:, dr:, dc:]
        differ = id_p != id_q
        if not differ.any():
            continue
        b, r, c = torch.nonzero(differ, as_tuple=True)
        p_first = depth[b, r, c] <= depth[b, r + dr, c + dc]  # the nearer pixel's triangle occludes
        o_r, o_c = torch.where(p_first, r, r + dr), torch.where(p_first, c, c + dc)
        n_r, n_c = torch.where(p_first, r + dr, r), torch.where(p_first, c + dc, c)
        tri_id = rast.face_id[b, o_r, o_c]
        o = torch.stack([o_c, o_r], -1).to(screen.dtype) + 0.5
        n = torch.stack([n_c, n_r], -1).to(screen.dtype) + 0.5
        alpha = torch.full_like(o[:, 0], -1.0)
        for k in range(3):
            a, e = tri[b, tri_id, k], tri[b, tri_id, (k + 1) % 3]
            across = neighbors[tri_id, k]
            silhouette = (across < 0) | (torch.sign(area[b, across.clamp(min=0)]) != torch.sign(area[b, tri_id]))
            denom = _cross2(n - o, e - a)
            safe = torch.where(denom.abs() > 1e-12, denom, torch.ones_like(denom))
            t_seg = _cross2(a - o, e - a) / safe
            t_edge = _cross2(a - o, n - o) / safe
            hit = silhouette & (denom.abs() > 1e-12) & (t_seg >= 0) & (t_seg <= 1) & (t_edge >= 0) & (t_edge <= 1)
            alpha = torch.where(hit & (alpha < 0), t_seg, alpha)
        keep = alpha >= 0
        if not keep.any():
            continue
        alpha, b = alpha[keep], b[keep]
        o_pix = (b * height + o_r[keep]) * width + o_c[keep]
        n_pix = (b * height + n_r[keep]) * width + n_c[keep]
        colour_o, colour_n = flat_image[o_pix], flat_image[n_pix]
        beyond = (alpha >= 0.5).unsqueeze(-1)
        # the edge past the midpoint covers part of n's pixel; before it, uncovers part of o's
        to_n = torch.where(beyond, (alpha - 0.5).unsqueeze(-1) * (colour_o - colour_n), torch.zeros_like(colour_o))
        to_o = torch.where(beyond, torch.zeros_like(colour_o), (0.5 - alpha).unsqueeze(-1) * (colour_n - colour_o))
        delta = delta.index_add(0, n_pix, to_n).index_add(0, o_pix, to_o)
    return (flat_image + delta).view_as(image)
