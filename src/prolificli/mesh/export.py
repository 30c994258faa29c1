"""Write meshes for other programs: coloured PLY, and textured OBJ or GLB through a UV atlas.

The textured path is `unwrap` (xatlas charts and packs the surface into the unit square),
`bake_texture` (look up a colour for every texel's 3D surface point) and `save_obj` / `save_glb`.

Conventions, shared by every function here:
- UVs have v pointing up and the texture image has row 0 at the top, so image row 0 is v = 1.
  This is what OBJ and trimesh expect; glTF puts v down the image, so save_glb writes 1 - v.
- Texel (row r, column c) is centred at u = (c + 0.5) / W, v = 1 - (r + 0.5) / H, the texel
  centres a GPU samples bilinearly.
- Our world is z-up. GLB is written y-up (rotated -90 degrees about x: (x, y, z) -> (x, z, -y))
  because glTF defines +y as up and viewers would otherwise show the object lying on its back.
  PLY and OBJ keep our coordinates unchanged (z-up); neither format defines an up axis.
- The GLB itself is written by gltf.py, with per-vertex normals (shared across UV seams).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..files import png_bytes, write_bytes_atomic
from .mesh import Mesh, MeshError

ColorFn = Callable[[Tensor], Tensor]

_CHUNK_POINTS = 65536  # colour queries per call, bounds the memory of a neural field
_CHUNK_CANDIDATES = 1 << 22  # texel candidates tested per rasterization step


@dataclass
class UVMesh:
    vertices: Tensor  # [M,3] float; a vertex on a UV seam appears once per chart
    faces: Tensor  # [F,3] long, same order and winding as the source mesh's faces
    uvs: Tensor  # [M,2] float in [0,1], v up
    source_index: Tensor  # [M] long, the source mesh vertex each vertex was copied from


def z_up_to_y_up(points: np.ndarray) -> np.ndarray:
    """Rotate -90 degrees about x, so our up (+z) becomes glTF's up (+y)."""
    points = np.asarray(points)
    return np.stack([points[:, 0], points[:, 2], -points[:, 1]], axis=1)


def save_ply(mesh: Mesh, path) -> Path:
    """Binary PLY with per-vertex colours when the mesh has them. Coordinates as they are (z-up)."""
    path = Path(path)
    write_bytes_atomic(path, mesh.to_trimesh().export(file_type="ply"))
    return path


def unwrap(mesh: Mesh, *, size: int = 1024, padding: int = 2) -> UVMesh:
    """Cut the surface into charts and pack them into [0,1]^2 with xatlas.

    `size` is the texture resolution the charts are packed for (bake with the same size) and
    `padding` the gap between charts in texels, which `bake_texture` fills so that bilinear
    sampling at a chart's edge does not reach a neighbouring chart. Faces keep their order.
    """
    try:
        import xatlas
    except ImportError:
        raise MeshError("texture export needs the xatlas package: pip install xatlas") from None

    if len(mesh.faces) == 0:
        raise MeshError("cannot unwrap a mesh without faces")
    vertices = mesh.vertices.detach().cpu()
    atlas = xatlas.Atlas()
    atlas.add_mesh(vertices.numpy().astype(np.float32), mesh.faces.cpu().numpy().astype(np.uint32))
    pack = xatlas.PackOptions()
    # xatlas only estimates its scale from `resolution`: the atlas comes out up to ~1.5x larger
    # per side and is then squeezed into the unit square, so the padding shrinks with it.
    pack.resolution = size
    pack.padding = padding
    atlas.generate(pack_options=pack)
    if atlas.atlas_count != 1:
        raise MeshError(f"xatlas made {atlas.atlas_count} texture pages; expected one")
    mapping, faces, uvs = atlas[0]
    source_index = torch.from_numpy(mapping.astype(np.int64))
    return UVMesh(vertices=vertices[source_index], faces=torch.from_numpy(faces.astype(np.int64)),
                  uvs=torch.from_numpy(uvs.astype(np.float32)).clamp(0, 1), source_index=source_index)


def bake_texture(uv_mesh: UVMesh, color_fn: ColorFn, size: int = 1024, padding: int = 4) -> np.ndarray:
    """Colour every texel covered by a triangle with `color_fn` at its 3D surface point (a
    triangle too small to cover a texel centre gets the empty texel under its centroid).

    `color_fn` maps points [P,3] (on the device of `uv_mesh.vertices`) to colours [P,3] in
    [0,1]. Texels outside all charts are then grown from their filled neighbours `padding`
    times; the rest stay black. Returns a [size, size, 3] uint8 image, row 0 at v = 1.
    """
    points, covered = _rasterize(uv_mesh, size)
    flat = torch.zeros(size * size, 3)
    index = torch.nonzero(covered.reshape(-1)).squeeze(1)
    with torch.no_grad():
        for start in range(0, len(index), _CHUNK_POINTS):
            chunk = index[start:start + _CHUNK_POINTS]
            colors = color_fn(points[chunk].to(uv_mesh.vertices.device))
            if colors.shape != (len(chunk), 3):
                raise MeshError(f"colour function returned shape {tuple(colors.shape)}, expected ({len(chunk)}, 3)")
            flat[chunk] = colors.detach().float().cpu().clamp(0, 1)
    image = _dilate(flat.reshape(size, size, 3).numpy(), covered.numpy(), padding)
    return (image * 255).round().astype(np.uint8)


def save_obj(uv_mesh: UVMesh, texture: np.ndarray, path) -> list[Path]:
    """Write `name.obj`, `name.mtl` and `name.png` side by side; coordinates as they are (z-up)."""
    path = Path(path).with_suffix(".obj")
    mtl, png = path.with_suffix(".mtl"), path.with_suffix(".png")
    write_bytes_atomic(png, png_bytes(_check_texture(texture)))
    write_bytes_atomic(mtl, (f"newmtl material0\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\n"
                        f"map_Kd {png.name}\n").encode())
    # every vertex has its own UV, so vertex i and texture coordinate i share an index
    faces = uv_mesh.faces.cpu().numpy() + 1
    text = io.StringIO()
    text.write(f"mtllib {mtl.name}\nusemtl material0\n")
    np.savetxt(text, uv_mesh.vertices.detach().cpu().numpy(), fmt="v %.8g %.8g %.8g")
    np.savetxt(text, uv_mesh.uvs.detach().cpu().numpy(), fmt="vt %.8g %.8g")
    np.savetxt(text, np.repeat(faces, 2, axis=1), fmt="f %d/%d %d/%d %d/%d")
    write_bytes_atomic(path, text.getvalue().encode())
    return [path, mtl, png]


def save_glb(uv_mesh: UVMesh, texture: np.ndarray, path) -> Path:
    """One GLB file, y-up, with smooth normals and the texture embedded as the PBR base colour."""
    from .. import __version__
    from .gltf import glb_bytes

    texture = _check_texture(texture)
    vertices = uv_mesh.vertices.detach().cpu().float()
    uvs = uv_mesh.uvs.detach().cpu().numpy()
    path = Path(path).with_suffix(".glb")
    data = glb_bytes(z_up_to_y_up(vertices.numpy()), z_up_to_y_up(seamless_normals(uv_mesh).numpy()),
                     np.stack([uvs[:, 0], 1 - uvs[:, 1]], axis=1),  # glTF's v points down the image
                     uv_mesh.faces.cpu().numpy(), png_bytes(texture), generator=f"prolificli {__version__}")
    write_bytes_atomic(path, data)
    return path


def seamless_normals(uv_mesh: UVMesh) -> Tensor:
    """[M,3] unit vertex normals of the source surface: the copies of a vertex on a UV seam share
    one normal, so a viewer shades the seam smoothly instead of showing the chart edges."""
    source_faces = uv_mesh.source_index[uv_mesh.faces.cpu()]
    count = int(uv_mesh.source_index.max()) + 1 if len(uv_mesh.source_index) else 0
    source_vertices = torch.zeros(count, 3).index_copy(0, uv_mesh.source_index, uv_mesh.vertices.detach().cpu().float())
    normals = Mesh(source_vertices, source_faces).vertex_normals()[uv_mesh.source_index]
    # a vertex whose faces all have zero area has no direction: give it +z rather than a zero vector
    normals[normals.norm(dim=1) < 0.5] = torch.tensor([0.0, 0.0, 1.0])
    return normals


def load_glb(path) -> tuple[Mesh, Tensor, Tensor]:
    """A GLB written by save_glb, back in our frame (z up): mesh, uvs [N,2], texture [T,T,3] in [0,1]."""
    import trimesh

    glb = trimesh.load(path, force="mesh", process=False)
    v = np.asarray(glb.vertices)
    vertices = np.stack([v[:, 0], -v[:, 2], v[:, 1]], axis=1)  # the inverse of z_up_to_y_up
    image = np.asarray(glb.visual.material.baseColorTexture.convert("RGB"), dtype=np.float32) / 255
    mesh = Mesh(torch.tensor(vertices, dtype=torch.float32), torch.tensor(np.asarray(glb.faces)))
    return mesh, torch.tensor(np.asarray(glb.visual.uv), dtype=torch.float32), torch.tensor(image)


def load_ply(path) -> Mesh:
    """A PLY written by save_ply, with its vertex colours in [0,1] where it has them."""
    import trimesh

    ply = trimesh.load(path, process=False)
    colors = getattr(ply.visual, "vertex_colors", None)
    colors = torch.tensor(np.asarray(colors)[:, :3] / 255, dtype=torch.float32) if colors is not None else None
    return Mesh(torch.tensor(np.asarray(ply.vertices), dtype=torch.float32), torch.tensor(np.asarray(ply.faces)),
                colors)


def _rasterize(uv_mesh: UVMesh, size: int) -> tuple[Tensor, Tensor]:
    """Surface point [size*size,3] and coverage [size,size] of every texel whose centre is in a triangle."""
    uv = uv_mesh.uvs.detach().cpu().double()
    # pixel coordinates in which texel (r, c) is centred at (x, y) = (c, r)
    pixel = torch.stack([uv[:, 0] * size - 0.5, (1 - uv[:, 1]) * size - 0.5], dim=1)[uv_mesh.faces.cpu()]
    corners = uv_mesh.vertices.detach().cpu().double()[uv_mesh.faces.cpu()]  # [F,3,3]
    lo = pixel.min(dim=1).values.ceil().clamp(0, size - 1).long()
    hi = pixel.max(dim=1).values.floor().clamp(-1, size - 1).long()
    extent = (hi - lo + 1).clamp(min=0)  # [F,2] texel columns, rows
    a, b, c = pixel.unbind(1)
    area = _cross(b - a, c - a)
    count = extent[:, 0] * extent[:, 1] * (area.abs() > 1e-12)  # zero-area triangles cover nothing

    points = torch.zeros(size * size, 3)
    covered = torch.zeros(size * size, dtype=torch.bool)
    # group triangles so that each step tests about _CHUNK_CANDIDATES texels
    step = torch.div(torch.cumsum(count, 0), _CHUNK_CANDIDATES, rounding_mode="floor")
    for group in torch.unique(step):
        tri = torch.nonzero((step == group) & (count > 0)).squeeze(1)
        if len(tri) == 0:
            continue
        owner = torch.repeat_interleave(tri, count[tri])
        first = torch.cumsum(count[tri], 0) - count[tri]
        local = torch.arange(len(owner)) - torch.repeat_interleave(first, count[tri])
        x = lo[owner, 0] + local % extent[owner, 0]
        y = lo[owner, 1] + torch.div(local, extent[owner, 0], rounding_mode="floor")
        p = torch.stack([x, y], dim=1).double() - a[owner]
        s = _cross(p, c[owner] - a[owner]) / area[owner]
        t = _cross(b[owner] - a[owner], p) / area[owner]
        inside = (s >= -1e-9) & (t >= -1e-9) & (s + t <= 1 + 1e-9)
        owner, s, t = owner[inside], s[inside, None], t[inside, None]
        tri_corners = corners[owner]
        surface = (1 - s - t) * tri_corners[:, 0] + s * tri_corners[:, 1] + t * tri_corners[:, 2]
        texel = y[inside] * size + x[inside]
        points[texel] = surface.float()
        covered[texel] = True
    # A triangle smaller than a texel may hold no texel centre. Where the texel under its
    # centroid is still empty (a chart of such triangles, isolated in the atlas), it takes the
    # triangle's 3D centroid, so the triangle samples its own colour instead of black.
    centroid = pixel.mean(dim=1).round().clamp(0, size - 1).long()  # nearest texel centre
    texel = centroid[:, 1] * size + centroid[:, 0]
    empty = ~covered[texel]
    points[texel[empty]] = corners[empty].mean(dim=1).float()
    covered[texel[empty]] = True
    return points, covered.reshape(size, size)


def _cross(u: Tensor, v: Tensor) -> Tensor:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _dilate(image: np.ndarray, filled: np.ndarray, steps: int) -> np.ndarray:
    """Give each empty texel next to a filled one the mean of its filled 8-neighbours, `steps` times."""
    image, filled = image.copy(), filled.copy()
    h, w = filled.shape
    for _ in range(steps):
        padded = np.pad(image * filled[..., None], ((1, 1), (1, 1), (0, 0)))
        padded_mask = np.pad(filled, 1).astype(np.float32)
        total = np.zeros_like(image)
        count = np.zeros((h, w), dtype=np.float32)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                if dy == 1 and dx == 1:
                    continue
                total += padded[dy:dy + h, dx:dx + w]
                count += padded_mask[dy:dy + h, dx:dx + w]
        grow = ~filled & (count > 0)
        if not grow.any():
            break
        image[grow] = total[grow] / count[grow, None]
        filled |= grow
    return image


def _check_texture(texture: np.ndarray) -> np.ndarray:
    texture = np.asarray(texture)
    if texture.dtype != np.uint8 or texture.ndim != 3 or texture.shape[2] not in (3, 4):
        raise MeshError(f"texture must be a uint8 [H,W,3] image, got {texture.dtype} {list(texture.shape)}")
    return texture
