"""The texture stage's files as other programs read them: the GLB by the Khronos glTF validator
and by pygltflib, the OBJ + MTL + PNG by trimesh, and the GLB's up axis against the turntable's."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import trimesh
from PIL import Image
from typer.testing import CliRunner

from prolificli.cli import app
from prolificli.recipe_files import PACKAGE_RECIPES

pytestmark = pytest.mark.slow  # whole stages, torchrun, Chromium or a download: python -m pytest -m 'not slow' skips them

pygltflib = pytest.importorskip("pygltflib")

# accessor componentType -> numpy dtype, and element type -> components (glTF 2.0, 3.6.2)
COMPONENT = {5126: np.float32, 5125: np.uint32, 5123: np.uint16, 5121: np.uint8}
WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.exit_code, result.stderr, result.exception)
    return result


def accessor(gltf, index: int) -> np.ndarray:
    """An accessor's data read from the GLB's binary chunk, by the spec, with pygltflib's parse."""
    acc = gltf.accessors[index]
    view = gltf.bufferViews[acc.bufferView]
    width = WIDTH[acc.type]
    dtype = np.dtype(COMPONENT[acc.componentType])
    assert view.byteStride in (None, width * dtype.itemsize)  # tightly packed
    start = (view.byteOffset or 0) + (acc.byteOffset or 0)
    data = np.frombuffer(gltf.binary_blob(), dtype=dtype, count=acc.count * width, offset=start)
    return data.reshape(acc.count, width) if width > 1 else data


def image_of(gltf, texture_index: int) -> np.ndarray:
    view = gltf.bufferViews[gltf.images[gltf.textures[texture_index].source].bufferView]
    png = gltf.binary_blob()[(view.byteOffset or 0):(view.byteOffset or 0) + view.byteLength]
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.fixture(scope="module")
def textured_run(tiny_nerf_run_template, tmp_path_factory):
    import shutil

    run = shutil.copytree(tiny_nerf_run_template, tmp_path_factory.mktemp("gltf") / "run")
    invoke("extract", run)
    invoke("texture", run, "--set", "texture.steps=2")
    return run


def test_glb_passes_the_khronos_validator(textured_run, gltf_validator):
    stage = textured_run / "texture"
    report = gltf_validator(stage / "model.glb")
    issues = report["issues"]
    assert (issues["numErrors"], issues["numWarnings"], issues["numInfos"]) == (0, 0, 0), issues["messages"]
    info = report["info"]
    images = [r["image"] for r in info["resources"] if "image" in r]
    assert info["hasTextures"] and info["materialCount"] == 1
    assert [(i["width"], i["height"], i["format"]) for i in images] == [(64, 64, "rgb")]
    # counts against the mesh the stage textured (the extract stage's) and the OBJ beside the GLB
    source = trimesh.load(textured_run / "extract" / "mesh.ply", process=False)
    obj = trimesh.load(stage / "model.obj", force="mesh", process=False)
    assert info["totalTriangleCount"] == len(source.faces) == len(obj.faces)
    assert info["totalVertexCount"] == len(obj.vertices) >= len(source.vertices)  # seams add copies


def test_validator_reports_a_broken_glb(tmp_path, gltf_validator):
    """The check can fail: a GLB whose index points past its vertices is an error."""
    from prolificli.mesh.gltf import glb_bytes
    from prolificli.files import png_bytes

    good = glb_bytes(np.eye(3), np.eye(3), np.zeros((3, 2)), np.array([[0, 1, 2]]),
                     png_bytes(np.zeros((4, 4, 3), np.uint8)), generator="test")
    assert gltf_validator(_write(tmp_path / "good.glb", good))["issues"]["numErrors"] == 0
    broken = good.replace(b'"count":3,"type":"SCALAR"', b'"count":4,"type":"SCALAR"')
    assert broken != good
    assert gltf_validator(_write(tmp_path / "broken.glb", broken))["issues"]["numErrors"] > 0


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_glb_read_by_pygltflib_matches_the_obj_read_by_trimesh(textured_run):
    stage = textured_run / "texture"
    gltf = pygltflib.GLTF2().load(str(stage / "model.glb"))
    (primitive,) = gltf.meshes[gltf.nodes[gltf.scenes[gltf.scene].nodes[0]].mesh].primitives
    positions = accessor(gltf, primitive.attributes.POSITION)
    normals = accessor(gltf, primitive.attributes.NORMAL)
    texcoords = accessor(gltf, primitive.attributes.TEXCOORD_0)
    triangles = accessor(gltf, primitive.indices).reshape(-1, 3)
    material = gltf.materials[primitive.material].pbrMetallicRoughness
    texture = image_of(gltf, material.baseColorTexture.index)

    obj = trimesh.load(stage / "model.obj", force="mesh", process=False)
    x, y, z = np.asarray(obj.vertices).T
    np.testing.assert_allclose(positions, np.stack([x, z, -y], axis=1), atol=1e-5)  # z-up OBJ, y-up GLB
    np.testing.assert_array_equal(triangles, np.asarray(obj.faces))
    uv = np.asarray(obj.visual.uv)
    np.testing.assert_allclose(texcoords, np.stack([uv[:, 0], 1 - uv[:, 1]], axis=1), atol=1e-6)  # v down in glTF
    assert "map_Kd model.png" in (stage / "model.mtl").read_text()
    np.testing.assert_array_equal(texture, np.asarray(obj.visual.material.image.convert("RGB")))
    np.testing.assert_array_equal(texture, np.asarray(Image.open(stage / "model.png").convert("RGB")))
    # normals: unit length, pointing out of the (roughly round) surface, one per vertex across seams
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1, atol=1e-5)
    outward = ((positions - positions.mean(0)) * normals).sum(1)
    assert (outward > 0).mean() > 0.95
    key = np.round(positions, 5)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    assert len(first) < len(positions)  # the atlas has seams
    np.testing.assert_allclose(normals, normals[first][inverse.reshape(-1)], atol=1e-6)


def test_glb_up_is_the_turntables_up(tiny_model_dir, tmp_path):
    """A cone, apex up in our (z-up) world, textured as an external mesh: the turntable shows the
    apex at the top of the frame, and in the GLB (read by pygltflib) the apex is at +y."""
    cone = trimesh.creation.cone(radius=0.5, height=1.2, sections=24)
    cone.export(tmp_path / "cone.obj")
    run = tmp_path / "cone"
    invoke("texture", run, "--mesh", tmp_path / "cone.obj", "--prompt", "a cone", "--recipe",
           PACKAGE_RECIPES / "tiny.yaml", "--set", f"prior.model={tiny_model_dir}", "--steps", "1",
           "--set", "texture.texture_size=32")

    from prolificli.rundir.directory import RunDir
    from prolificli.cameras import orbit_cameras
    from prolificli.evaluation.frames import render_all, renderer

    frames = render_all(renderer(RunDir.open(run), "texture"), orbit_cameras(4, 0.0, 3.0, 40.0), 48)
    silhouette = frames.opacity[..., 0] > 0.5  # [N,H,W], row 0 at the top
    rows = np.nonzero(silhouette.any(dim=2).all(dim=0).numpy())[0]
    assert len(rows) > 10
    width = silhouette.sum(dim=2).float().mean(0).numpy()
    top, bottom = width[rows[: len(rows) // 4]].mean(), width[rows[-len(rows) // 4:]].mean()
    assert top < 0.5 * bottom  # narrow at the top of the frame: the apex is up

    gltf = pygltflib.GLTF2().load(str(run / "texture" / "model.glb"))
    positions = accessor(gltf, gltf.meshes[0].primitives[0].attributes.POSITION)
    apex = positions[np.argmax(positions[:, 1])]
    radial = np.linalg.norm(positions[:, [0, 2]] - positions[:, [0, 2]].mean(0), axis=1)
    high = positions[:, 1] > positions[:, 1].mean()
    assert radial[high].mean() < radial[~high].mean()  # narrow at +y
    assert np.isclose(apex[1] - positions[:, 1].min(), 1.2, atol=1e-4)  # the cone's height lies along y
    assert json.loads((run / "texture" / "manifest.json").read_text())["status"] == "complete"
