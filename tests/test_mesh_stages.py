"""`prolific geometry` and `prolific texture` end to end on the tiny prior, the swap of an
external mesh, and the one-line errors of the mesh stages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh
from typer.testing import CliRunner

from prolificli.recipe_files import PACKAGE_RECIPES
from prolificli.rundir.checkpoint import load_checkpoint
from prolificli.cli import app

pytestmark = pytest.mark.slow  # whole stages, torchrun, Chromium or a download: python -m pytest -m 'not slow' skips them

TINY_RECIPE = str(PACKAGE_RECIPES / "tiny.yaml")


def invoke(*args, input=None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def ok(result):
    assert result.exit_code == 0, (result.exit_code, result.stderr, result.exception)
    return result


def one_line_error(result, fragment):
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert "Traceback" not in result.stderr and fragment in " ".join(result.stderr.split()), result.stderr


@pytest.fixture
def extracted_run(tiny_nerf_run):
    ok(invoke("extract", tiny_nerf_run))
    return tiny_nerf_run


def test_geometry_stage_moves_the_surface_and_writes_a_watertight_mesh(extracted_run):
    summary = json.loads(ok(invoke("geometry", extracted_run, "--json")).stdout)
    assert summary["status"] == "complete" and summary["step"] == summary["steps"] == 4
    stage = extracted_run / "geometry"
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["config"]["geometry"]["guidance"] == {**manifest["config"]["geometry"]["guidance"],
                                                          "method": "sds", "cfg_scale": 100.0}
    assert manifest["inputs"][0]["path"].endswith("extract/checkpoint")
    before = load_checkpoint(extracted_run / "extract" / "checkpoint").tensors["dmtet.sdf"]
    after = load_checkpoint(stage / "checkpoint").tensors["dmtet.sdf"]
    assert not np.allclose(before.numpy(), after.numpy())
    mesh = trimesh.load(stage / "mesh.ply", process=False)
    assert mesh.is_watertight and len(mesh.faces) > 100
    metrics = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    assert {"normal_consistency", "laplacian", "faces"} <= set(metrics[-1])
    assert (stage / "previews" / "latest.png").is_file()
    # a complete stage is not silently redone
    one_line_error(invoke("geometry", extracted_run), "--force")
    one_line_error(invoke("geometry", extracted_run, "--resume"), "already complete")


def test_texture_stage_exports_obj_and_glb(extracted_run):
    ok(invoke("texture", extracted_run, "--set", "texture.steps=2"))  # from the extract stage's mesh
    stage = extracted_run / "texture"
    for name in ("model.obj", "model.mtl", "model.png", "model.glb"):
        assert (stage / name).is_file(), name
    glb = trimesh.load(stage / "model.glb", force="mesh")
    assert glb.visual.uv is not None and glb.visual.material.baseColorTexture.size == (64, 64)
    obj = trimesh.load(stage / "model.obj", force="mesh")
    assert obj.visual.uv.shape == (len(obj.vertices), 2)
    extracted = trimesh.load(extracted_run / "extract" / "mesh.ply", process=False)
    assert np.allclose(obj.bounds, extracted.bounds, atol=1e-4)  # OBJ keeps the run's coordinates
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["status"] == "complete" and "model.glb" in manifest["outputs"]


def test_texture_an_external_mesh_in_a_new_run(tiny_model_dir, tmp_path):
    box = trimesh.creation.box((2.0, 1.0, 0.5))
    box.apply_translation([3.0, 0.0, 1.0])
    box = box.subdivide()
    box.export(tmp_path / "box.obj")
    out = tmp_path / "boxrun"
    ok(invoke("texture", out, "--mesh", tmp_path / "box.obj", "--prompt", "a wooden crate", "--recipe", TINY_RECIPE,
              "--set", f"prior.model={tiny_model_dir}", "--steps", "2"))
    assert json.loads((out / "run.json").read_text())["prompt"] == "a wooden crate"
    # exported in the mesh's own coordinates: the OBJ as given, the GLB rotated to y-up
    obj = trimesh.load(out / "texture" / "model.obj", force="mesh")
    assert np.allclose(obj.bounds, box.bounds, atol=1e-4)
    glb = trimesh.load(out / "texture" / "model.glb", force="mesh")
    lo, hi = box.bounds
    assert np.allclose(glb.bounds, [[lo[0], lo[2], -hi[1]], [hi[0], hi[2], -lo[1]]], atol=1e-4)


def test_mesh_stage_errors(tiny_nerf_run, tmp_path):
    one_line_error(invoke("geometry", tiny_nerf_run), "prolific extract")
    one_line_error(invoke("texture", tiny_nerf_run), "prolific extract")
    one_line_error(invoke("texture", tiny_nerf_run, "--mesh", tmp_path / "missing.obj"), "not found")
    (tmp_path / "junk.obj").write_text("this is not a mesh\n")
    one_line_error(invoke("texture", tiny_nerf_run, "--mesh", tmp_path / "junk.obj"), "junk.obj")
    one_line_error(invoke("texture", tmp_path / "nowhere", "--mesh", tmp_path / "junk.obj"), "--prompt")
    one_line_error(invoke("geometry", tmp_path / "nowhere"), "error")


def test_rendered_baked_texture_reproduces_the_colour_field():
    """bake_texture + sample_texture (the evaluation's GLB renderer) agree with the colour function
    at the visible surface points: the UV and image-row conventions match end to end."""
    import torch

    from prolificli.cameras import orbit_cameras
    from prolificli.config import MeshRenderConfig
    from prolificli.mesh.export import bake_texture, unwrap
    from prolificli.mesh.mesh import Mesh
    from prolificli.render.mesh import render_mesh, sample_texture

    sphere = trimesh.creation.icosphere(3, 0.4)
    mesh = Mesh(torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces))

    def color_fn(points):
        return (points / 0.8 + 0.5).clamp(0, 1)

    uv_mesh = unwrap(mesh, size=256)
    texture = torch.tensor(bake_texture(uv_mesh, color_fn, size=256), dtype=torch.float32) / 255
    cameras = orbit_cameras(2, 20, 1.3, 50)
    textured = Mesh(uv_mesh.vertices, uv_mesh.faces)
    out = render_mesh(textured, cameras, 48, MeshRenderConfig(backend="torch", antialias=False))
    rendered = sample_texture(out.interpolate(uv_mesh.uvs, uv_mesh.faces), texture)
    expected = color_fn(out.position)
    inside = out.mask & torch.nn.functional.max_pool2d((~out.mask).float()[:, None], 3, 1, 1)[:, 0].eq(0)
    error = (rendered - expected)[inside].abs()
    assert inside.sum() > 500 and error.mean() < 0.02 and error.max() < 0.1


def test_a_surface_that_vanishes_fails_the_stage_with_one_line_and_exit_code_1(extracted_run, monkeypatch):
    from prolificli.mesh.dmtet import DMTet
    from prolificli.mesh.mesh import Mesh

    real_mesh = DMTet.mesh
    calls = []

    def vanishing(self):
        calls.append(1)
        mesh = real_mesh(self)
        return mesh if len(calls) < 3 else Mesh(mesh.vertices[:0], mesh.faces[:0])

    monkeypatch.setattr(DMTet, "mesh", vanishing)
    result = invoke("geometry", extracted_run)
    assert result.exit_code == 1, (result.exit_code, result.stderr, result.exception)
    assert "Traceback" not in result.stderr and "vanished" in result.stderr
    manifest = json.loads((extracted_run / "geometry" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "vanished" in manifest["error"]


def test_lambert_shading_divides_the_nerfs_baked_light_out_and_puts_it_back_by_the_normals():
    """A field whose colour is one albedo lit by Lambert's law (what the toy NeRFs learn): the
    unshaded colours are that albedo, and shading another tessellation of the sphere by its own
    normals reproduces the field."""
    import torch

    from prolificli.methods import build_recipe
    from prolificli.mesh.dmtet import DMTet
    from prolificli.mesh.tets import TetGrid
    from prolificli.stages.geometry import GeometryProblem

    recipe = build_recipe(TINY_RECIPE, ["geometry.shading=lambert"])
    light = torch.tensor(recipe.geometry.light_direction)
    light = light / light.norm()
    albedo = torch.tensor([0.2, 0.5, 0.9])

    def lit_sphere(x):
        density = 200 * torch.sigmoid((0.35 - x.norm(dim=-1)) / 0.01)
        shade = recipe.geometry.ambient + (1 - recipe.geometry.ambient) * (
            torch.nn.functional.normalize(x, dim=-1) @ light).clamp(min=0)
        return density, albedo * shade[:, None]

    grid = TetGrid.cube(24, 0.5)
    dmtet = DMTet(grid, grid.vertices().norm(dim=-1) - 0.35)
    problem = GeometryProblem(recipe, dmtet, lit_sphere, prompter=None, generator=torch.Generator())
    error = (problem.base_colors - albedo).abs()
    assert error.mean() < 0.01
    # another surface (a finer tessellation): its own normals light the looked-up albedo
    finer = TetGrid.cube(40, 0.5)
    mesh = DMTet(finer, finer.vertices().norm(dim=-1) - 0.35).mesh().detach()
    reshaded = problem._base_color(mesh.vertices) * problem.shade(mesh.vertex_normals())
    _, expected = lit_sphere(mesh.vertices)
    assert (reshaded - expected).abs().mean() < 0.01
