"""`prolific extract`: the surface of analytic toy objects (known truth), and the stage end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import trimesh
from typer.testing import CliRunner

from prolificli.rundir.directory import ArtifactError
from prolificli.cli import app
from prolificli.config import ExtractConfig, Recipe, VolumeRenderConfig
from prolificli.rundir.outputs import open_mesh
from prolificli.surface import extract_surface
from prolificli.toyworld.shapes import SCALE, ToyObject, ToyObjectField, ground_truth_mesh, signed_distance


RENDER = VolumeRenderConfig(n_coarse=64, n_fine=32)


@pytest.mark.parametrize("shape,genus", [("sphere", 0), ("torus", 1)])
def test_surface_of_a_toy_object_matches_the_truth(shape, genus):
    field = ToyObjectField(ToyObject(shape, "red"))
    surface = extract_surface(field, 1.0, ExtractConfig(resolution=40), Recipe(), RENDER)
    mesh = surface.mesh.to_trimesh()
    assert mesh.is_watertight and mesh.euler_number == 2 - 2 * genus
    # every vertex lies on the true surface (the analytic signed distance is the truth), to within
    # the rendered silhouette's own offset: grazing rays cross more of the density's soft shell, so
    # the volume-rendered silhouette (which the automatic threshold matches) sits ~1% outside
    distance = signed_distance(shape, surface.mesh.vertices).abs()
    assert distance.mean() < 0.015 * SCALE and distance.max() < 0.03 * SCALE
    # ... and it covers all of the object: every point of an independently built mesh of it is near ours
    from scipy.spatial import cKDTree

    truth_points = trimesh.sample.sample_surface(ground_truth_mesh(shape), 5000, seed=0)[0]
    ours = trimesh.sample.sample_surface(mesh, 20000, seed=1)[0]
    assert cKDTree(ours).query(truth_points)[0].mean() < 0.015 * SCALE
    # the automatic threshold sits between empty space and the solid's density
    assert 0.01 * field.max_density < surface.threshold < 0.95 * field.max_density
    # vertex colours are the field's albedo (red, shaded): red dominates
    colors = surface.mesh.colors
    assert (colors[:, 0] >= colors[:, 1]).float().mean() > 0.95


@pytest.mark.parametrize("shape", ["cube", "torus"])
def test_given_threshold_at_the_true_surface_is_exact(shape):
    # the toy density is D sigmoid(-sdf / s): its D/2 level set is the true surface
    field = ToyObjectField(ToyObject(shape, "blue"))
    config = ExtractConfig(resolution=40, threshold=field.max_density / 2)
    surface = extract_surface(field, 1.0, config, Recipe(), RENDER)
    distance = signed_distance(shape, surface.mesh.vertices).abs()
    assert distance.mean() < 0.004 * SCALE
    assert surface.mesh.to_trimesh().volume == pytest.approx(ground_truth_mesh(shape).volume, rel=0.04)


class TwoPieces(torch.nn.Module):
    """A toy sphere plus a small far-away blob (a floater)."""

    def __init__(self):
        super().__init__()
        self.sphere = ToyObjectField(ToyObject("sphere", "red"))

    def density(self, x):
        blob = 500 * torch.sigmoid(-((x - torch.tensor([0.7, 0.7, 0.7])).norm(dim=-1) - 0.06) / 0.002)
        return self.sphere.density(x) + blob

    def forward(self, x):
        return self.density(x), self.sphere(x)[1]


def test_small_floating_pieces_are_dropped():
    surface = extract_surface(TwoPieces(), 1.0, ExtractConfig(resolution=40, threshold=100.0), Recipe(), RENDER)
    assert surface.dropped_components == 1
    assert surface.mesh.vertices.norm(dim=-1).max() < 0.5  # nothing left near the blob
    kept = extract_surface(TwoPieces(), 1.0, ExtractConfig(resolution=40, threshold=100.0, min_component=0.0),
                           Recipe(), RENDER)
    assert kept.dropped_components == 0 and kept.mesh.vertices.norm(dim=-1).max() > 1.0


def test_empty_level_set_is_a_clear_error():
    field = ToyObjectField(ToyObject("cube", "red"))
    with pytest.raises(ArtifactError, match="level set is empty.*lower --threshold"):
        extract_surface(field, 1.0, ExtractConfig(resolution=16, threshold=1000.0), Recipe(), RENDER)


def invoke(*args, input=None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


@pytest.mark.slow
def test_extract_stage_end_to_end(tiny_nerf_run):
    result = invoke("extract", tiny_nerf_run, "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    summary = json.loads(result.stdout)
    assert summary["faces"] > 100
    stage = tiny_nerf_run / "extract"
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["config"]["extract"]["resolution"] == 16
    assert manifest["inputs"][0]["path"].endswith("nerf/checkpoint")
    mesh = trimesh.load(stage / "mesh.ply", process=False)
    assert mesh.is_watertight and len(mesh.faces) == summary["faces"]
    assert mesh.visual.vertex_colors.shape[0] == len(mesh.vertices)
    assert (stage / "previews" / "latest.png").is_file()
    # the checkpoint is the DMTet state: it re-creates exactly the written mesh
    dmtet = open_mesh(tiny_nerf_run, "extract").dmtet
    again = dmtet.mesh()
    assert np.allclose(again.vertices.detach().numpy(), mesh.vertices, atol=1e-5)


@pytest.mark.slow
def test_extract_reads_the_run_from_stdin_and_refuses_to_overwrite(tiny_nerf_run):
    result = invoke("extract", "--resolution", "12", input=f"{tiny_nerf_run}\n")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert result.stdout.strip() == str(tiny_nerf_run.resolve())
    again = invoke("extract", tiny_nerf_run)
    assert again.exit_code == 2 and "--force" in again.stderr and "Traceback" not in again.stderr
    assert invoke("extract", tiny_nerf_run, "--force", "--resolution", "12").exit_code == 0


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["--particle", "5"], "has 1 particle"),
    (["--threshold", "1e9"], "level set is empty"),
    (["--set", "extract.resolutoin=3"], "did you mean"),
])
def test_extract_bad_input_is_one_line(tiny_nerf_run, args, message):
    result = invoke("extract", tiny_nerf_run, *args)
    assert result.exit_code == 2, (result.stderr, result.exception)
    assert message in " ".join(result.stderr.split()) and "Traceback" not in result.stderr


def test_extract_needs_a_complete_nerf_stage(tmp_path):
    result = invoke("extract", tmp_path)
    assert result.exit_code == 2 and "error:" in result.stderr


def test_albedo_across_surface_reads_what_the_volume_renderer_shows():
    """Compositing along the normal equals the colour the renderer draws for a ray hitting the
    surface head-on: compare with render_rays on rays along -normal through the same points."""
    from prolificli.render.volume import render_rays
    from prolificli.scene.nerf import albedo_across_surface

    field = ToyObjectField(ToyObject("sphere", "yellow"))
    directions = torch.nn.functional.normalize(torch.randn(64, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    radius = signed_distance("sphere", torch.zeros(1, 3)).abs().item()  # the centre is one radius inside
    points = directions * radius
    ours = albedo_across_surface(field, points, directions, half_width=0.05, samples=64)
    rendered = render_rays(field, points + 0.5 * directions, -directions, VolumeRenderConfig(n_coarse=128, n_fine=64),
                           stratified=False)
    expected = rendered["rgb"] / rendered["opacity"].clamp(min=1e-6)
    assert torch.allclose(ours, expected, atol=0.03)
