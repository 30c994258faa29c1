"""Mesh export: files are read back with trimesh (an independent reader) and the baked texture is
sampled the way a renderer would, then compared with the colour function it was baked from."""

import importlib.util
import sys

import numpy as np
import pytest
import torch
import trimesh

from prolificli.mesh.export import UVMesh, bake_texture, save_glb, save_obj, save_ply, unwrap, z_up_to_y_up
from prolificli.mesh.mesh import Mesh, MeshError

needs_xatlas = pytest.mark.skipif(importlib.util.find_spec("xatlas") is None, reason="xatlas not installed")
SIZE = 128


def sphere(subdivisions=2) -> Mesh:
    tm = trimesh.creation.icosphere(subdivisions)
    return Mesh(torch.tensor(tm.vertices, dtype=torch.float32), torch.tensor(tm.faces, dtype=torch.long))


def position_color(points):
    """Smooth, and different on every part of the unit sphere, so a misplaced texel shows."""
    return (points * 0.5 + 0.5).clamp(0, 1)


def sample_bilinear(image, uv, flip_v=True):
    """What a GPU does: texel centres at (i + 0.5) / size, image row 0 at v = 1, clamped edges."""
    image = np.asarray(image.convert("RGB"), dtype=np.float64) / 255
    h, w = image.shape[:2]
    v = 1 - uv[:, 1] if flip_v else uv[:, 1]
    x, y = uv[:, 0] * w - 0.5, v * h - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]

    def texel(row, col):
        return image[np.clip(row, 0, h - 1), np.clip(col, 0, w - 1)]

    return ((1 - fx) * (1 - fy) * texel(y0, x0) + fx * (1 - fy) * texel(y0, x0 + 1)
            + (1 - fx) * fy * texel(y0 + 1, x0) + fx * fy * texel(y0 + 1, x0 + 1))


@pytest.fixture(scope="module")
def baked(tmp_path_factory):
    uv_mesh = unwrap(sphere(), size=SIZE)
    texture = bake_texture(uv_mesh, position_color, size=SIZE)
    root = tmp_path_factory.mktemp("export")
    return uv_mesh, texture, save_obj(uv_mesh, texture, root / "obj" / "model"), save_glb(uv_mesh, texture, root / "glb" / "model")


def test_ply_round_trip(tmp_path):
    mesh = sphere(1)
    mesh.colors = torch.rand(len(mesh.vertices), 3, generator=torch.Generator().manual_seed(0))
    path = save_ply(mesh, tmp_path / "new" / "dir" / "mesh.ply")
    loaded = trimesh.load(path, process=False)
    np.testing.assert_allclose(loaded.vertices, mesh.vertices.numpy(), atol=1e-6)
    np.testing.assert_array_equal(loaded.faces, mesh.faces.numpy())
    np.testing.assert_allclose(loaded.visual.vertex_colors[:, :3] / 255, mesh.colors.numpy(), atol=0.5 / 255 + 1e-6)

    plain = save_ply(sphere(1), tmp_path / "plain.ply")
    assert len(trimesh.load(plain, process=False).faces) == len(mesh.faces)


@needs_xatlas
@pytest.mark.parametrize("tm", [trimesh.creation.icosphere(2), trimesh.creation.box()], ids=["sphere", "box"])
def test_unwrap_keeps_every_triangle(tm):
    mesh = Mesh(torch.tensor(tm.vertices, dtype=torch.float32), torch.tensor(tm.faces, dtype=torch.long))
    uv_mesh = unwrap(mesh, size=64)
    assert uv_mesh.faces.shape == mesh.faces.shape and uv_mesh.faces.dtype == torch.long
    assert len(uv_mesh.vertices) == len(uv_mesh.uvs) == len(uv_mesh.source_index) >= len(mesh.vertices)
    # face i is still the same 3D triangle, corners in the same order (so the same winding)
    torch.testing.assert_close(mesh.vertices[uv_mesh.source_index[uv_mesh.faces]], mesh.vertices[mesh.faces])
    torch.testing.assert_close(uv_mesh.vertices[uv_mesh.faces], mesh.vertices[mesh.faces])
    assert uv_mesh.uvs.min() >= 0 and uv_mesh.uvs.max() <= 1


def test_bake_puts_v_up_at_image_row_zero():
    # a quad covering only the top half of UV space (v in [0.5, 1]); colour = height z = v
    uvs = torch.tensor([[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]])
    vertices = torch.cat([uvs, uvs[:, 1:]], dim=1)
    quad = UVMesh(vertices, torch.tensor([[0, 1, 2], [0, 2, 3]]), uvs, torch.arange(4))
    image = bake_texture(quad, lambda p: p[:, 2:].expand(-1, 3), size=8, padding=0)
    assert (image[:4] > 0).all() and (image[4:] == 0).all()
    expected = np.round((1 - (np.arange(4) + 0.5) / 8) * 255)  # texel centres' v, top row first
    np.testing.assert_allclose(image[:4, 3, 0], expected, atol=1)


def test_a_triangle_smaller_than_a_texel_gets_its_own_colour():
    # a big quad in the top-left quarter and, far from it, a triangle a fifth of a texel across
    uvs = torch.tensor([[0.0, 0.5], [0.5, 0.5], [0.5, 1.0], [0.0, 1.0], [0.80, 0.20], [0.81, 0.20], [0.80, 0.21]])
    vertices = torch.cat([uvs, torch.zeros(7, 1)], dim=1)
    vertices[4:, 2] = 1.0  # colour = z: 0 on the quad, 1 on the small triangle
    mesh = UVMesh(vertices, torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6]]), uvs, torch.arange(7))
    image = bake_texture(mesh, lambda p: p[:, 2:].expand(-1, 3).clone() * 0.8 + 0.1, size=16, padding=0)
    centroid = uvs[4:].mean(0).numpy()
    row, col = int((1 - centroid[1]) * 16), int(centroid[0] * 16)  # the texel under the centroid
    assert image[row, col, 0] == round(0.9 * 255)  # the triangle's colour, not black
    assert (image.sum(-1) > 0).sum() == 8 * 8 + 1  # the quad's 64 texels and that one


@needs_xatlas
@pytest.mark.parametrize("kind", ["obj", "glb"])
def test_texture_read_back_matches_color_function(baked, kind):
    _, _, obj_paths, glb_path = baked
    loaded = trimesh.load(obj_paths[0] if kind == "obj" else glb_path, force="mesh")
    assert isinstance(loaded.visual, trimesh.visual.TextureVisuals)
    image = loaded.visual.material.image if kind == "obj" else loaded.visual.material.baseColorTexture
    assert image.size == (SIZE, SIZE)
    positions = np.asarray(loaded.vertices)
    if kind == "glb":  # undo the y-up rotation to get our world coordinates back
        positions = np.stack([positions[:, 0], -positions[:, 2], positions[:, 1]], axis=1)
    expected = position_color(torch.tensor(positions)).numpy()
    error = np.abs(sample_bilinear(image, loaded.visual.uv) - expected)
    assert error.mean() < 0.01 and error.max() < 0.05
    # the check can fail: reading the image upside down is far off
    assert np.abs(sample_bilinear(image, loaded.visual.uv, flip_v=False) - expected).mean() > 0.1


@needs_xatlas
def test_obj_files_reference_each_other(baked):
    obj, mtl, png = baked[2]
    assert [p.suffix for p in (obj, mtl, png)] == [".obj", ".mtl", ".png"]
    assert f"mtllib {mtl.name}" in obj.read_text().splitlines()[0]
    assert f"map_Kd {png.name}" in mtl.read_text()
    assert sorted(p.name for p in obj.parent.iterdir()) == ["model.mtl", "model.obj", "model.png"]


@needs_xatlas
def test_glb_is_one_y_up_file(baked):
    uv_mesh, texture, _, glb_path = baked
    assert [p.name for p in glb_path.parent.iterdir()] == ["model.glb"]
    loaded = trimesh.load(glb_path, force="mesh", process=False)
    np.testing.assert_allclose(loaded.vertices, z_up_to_y_up(uv_mesh.vertices.numpy()), atol=1e-6)
    np.testing.assert_array_equal(loaded.faces, uv_mesh.faces.numpy())
    np.testing.assert_allclose(loaded.visual.uv, uv_mesh.uvs.numpy(), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(loaded.visual.material.baseColorTexture.convert("RGB")), texture)
    top = uv_mesh.vertices[:, 2].argmax()  # our highest point is glTF's highest
    assert loaded.vertices[:, 1].argmax() == top


@needs_xatlas
def test_padding_fills_texels_next_to_charts():
    uv_mesh = unwrap(sphere(), size=64)
    def white(points):
        return torch.ones_like(points)

    bare = bake_texture(uv_mesh, white, size=64, padding=0).any(-1)
    padded = bake_texture(uv_mesh, white, size=64, padding=2)
    # texels just outside a chart: empty without padding, next to a covered texel
    grown = np.pad(bare, 1)
    ring = np.zeros_like(bare)
    for dy in range(3):
        for dx in range(3):
            ring |= grown[dy:dy + 64, dx:dx + 64]
    ring &= ~bare
    assert bare.any() and ring.any()
    assert (padded[ring] == 255).all()  # filled with the chart's colour, not the black background
    assert (padded == 0).all(-1).any()  # charts are padded, not the whole image flooded


def test_missing_xatlas_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "xatlas", None)  # makes `import xatlas` raise ImportError
    with pytest.raises(MeshError, match="pip install xatlas"):
        unwrap(sphere(1))


def test_bad_texture_is_a_mesh_error(tmp_path):
    quad = UVMesh(torch.zeros(3, 3), torch.tensor([[0, 1, 2]]), torch.zeros(3, 2), torch.arange(3))
    with pytest.raises(MeshError, match="uint8"):
        save_glb(quad, np.zeros((4, 4, 3), dtype=np.float32), tmp_path / "bad.glb")
