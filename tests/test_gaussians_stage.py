"""Gaussian-splat particles (scene.representation: gaussians): initialisation, density control with
the optimiser following the surgery, resume across a densification, and the run through the CLI
(render, eval)."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from prolificli.config import DensifyConfig, FieldConfig, GaussiansConfig
from prolificli.methods import METHODS, build_recipe
from prolificli.optimize import Interrupted
from prolificli.scene.densify import DensityControl
from prolificli.scene.gaussians import GaussianCloud, smooth_random_field
from prolificli.render.splat import covariances_3d
from prolificli.scene.nerf import NeRFField
from prolificli.scene.splat_ply import read_splat_ply
from prolificli.stages import common, nerf
from prolificli.stages.gaussians import means_lr_at

from helpers import TINY_RECIPE, invoke


def test_object_init_fills_the_ball():
    cloud = GaussianCloud.initial(GaussiansConfig(count=4000, init_radius=0.5), bound=1.0,
                                  generator=torch.Generator().manual_seed(0))
    radius = cloud.means.norm(dim=-1)
    assert cloud.count == 4000 and radius.max() <= 0.5
    assert abs(float((radius < 0.5 * 0.5 ** (1 / 3)).float().mean()) - 0.5) < 0.03  # uniform in volume
    assert torch.allclose(cloud.opacities(), torch.full((4000,), 0.1))
    assert torch.allclose(cloud.scales(), torch.full((4000, 3), 0.5 * (4 / 3 * math.pi / 4000) ** (1 / 3)))


def test_scene_init_is_hollow():
    cloud = GaussianCloud.initial(GaussiansConfig(count=1000, init="scene", init_radius=0.8), bound=1.0,
                                  generator=torch.Generator().manual_seed(0))
    assert cloud.means.norm(dim=-1).min() >= 0.8


def test_the_initial_colour_field_has_the_kernels_variance_and_correlation():
    # over many draws, the field's covariance between two points d apart is std^2 exp(-d^2 / (2 l^2)),
    # the squared-exponential kernel written out here (not the feature map's own formula)
    std, length = 0.2, 0.5
    points = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.6, 0.4], [1.5, -1.0, 0.0]])
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([smooth_random_field(points, std, length, generator) for _ in range(4000)])  # [D,P,3]
    values = draws.permute(0, 2, 1).reshape(-1, len(points))  # the channels are independent draws too
    covariance = values.T @ values / len(values)
    distance = torch.cdist(points, points)
    expected = std ** 2 * torch.exp(-distance ** 2 / (2 * length ** 2))
    assert torch.allclose(covariance, expected, atol=0.05 * std ** 2)
    assert abs(float(values.mean())) < 0.1 * std


def test_particles_start_with_different_colours_only_with_the_colour_field():
    def mean_colours(cfg):
        return torch.stack([GaussianCloud.initial(cfg, 1.0, torch.Generator().manual_seed(seed)).colors().mean(0)
                            for seed in range(8)])
    # per-Gaussian noise averages out: every particle the same grey
    assert mean_colours(GaussiansConfig(count=2000)).std(dim=0).max() < 0.003
    spread = mean_colours(GaussiansConfig(count=2000, init_color_std=0.05, init_color_length=2.0)).std(dim=0)
    assert spread.min() > 0.015


def test_nerf_init_places_gaussians_where_the_field_is_dense():
    torch.manual_seed(0)
    field = NeRFField(FieldConfig(density_init_strength=10.0, density_init_radius=0.5))  # a blob of radius ~0.5
    cloud = GaussianCloud.from_nerf(field, GaussiansConfig(count=2000), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, albedo = field(cloud.means)
    assert cloud.means.norm(dim=-1).quantile(0.95) < 0.6  # in the blob, though candidates fill the box
    assert torch.allclose(cloud.colors(), albedo.clamp(0.02, 0.98), atol=1e-5)


def test_smoothing_3d_adds_its_variance_and_keeps_each_gaussians_mass():
    """Against the 3x3 matrices: Sigma' = Sigma + std^2 I, and opacity' * sqrt(det Sigma') equals
    opacity * sqrt(det Sigma) (the Gaussian's integral), for rotated, anisotropic Gaussians."""
    g = torch.Generator().manual_seed(3)
    n, std = 50, 0.02
    cloud = GaussianCloud(torch.randn(n, 3, generator=g, dtype=torch.float64),
                          torch.log(torch.rand(n, 3, generator=g, dtype=torch.float64) * 0.05 + 1e-3),
                          torch.randn(n, 4, generator=g, dtype=torch.float64),
                          torch.randn(n, generator=g, dtype=torch.float64) * 3,
                          torch.zeros(n, 3, dtype=torch.float64))
    log_scales, opacity_logits = cloud.smoothed(std)
    sigma = covariances_3d(cloud.log_scales, cloud.quaternions)
    sigma_smoothed = covariances_3d(log_scales, cloud.quaternions)
    assert torch.allclose(sigma_smoothed, sigma + std ** 2 * torch.eye(3, dtype=torch.float64), atol=1e-12)
    mass = cloud.opacities() * torch.linalg.det(sigma).sqrt()
    assert torch.allclose(torch.sigmoid(opacity_logits) * torch.linalg.det(sigma_smoothed).sqrt(), mass, rtol=1e-9)
    assert cloud.smoothed(0.0)[0] is cloud.log_scales  # off: the parameters themselves


def test_the_means_learning_rate_decays_log_linearly_to_the_last_step():
    recipe = build_recipe(TINY_RECIPE, ["nerf.steps=101", "gaussians.lr_means=0.01", "gaussians.lr_means_final=0.0001"])
    assert means_lr_at(recipe, 0) == pytest.approx(0.01)
    assert means_lr_at(recipe, 50) == pytest.approx(0.001)  # the geometric mean, half way
    assert means_lr_at(recipe, 100) == pytest.approx(0.0001)
    assert means_lr_at(build_recipe(TINY_RECIPE, ["gaussians.lr_means=0.01"]), 77) == 0.01  # constant by default


def _cloud_and_adam(n=6):
    g = torch.Generator().manual_seed(1)
    cloud = GaussianCloud(torch.randn(n, 3, generator=g) * 0.1, torch.full((n, 3), math.log(0.005)),
                          torch.randn(n, 4, generator=g), torch.zeros(n), torch.randn(n, 3, generator=g))
    optimizer = torch.optim.Adam(cloud.param_groups(GaussiansConfig()), eps=1e-15)
    sum(p.square().sum() * (i + 1) for i, p in enumerate(cloud.parameters())).backward()
    optimizer.step()
    return cloud, optimizer


def test_densify_clones_small_splits_large_prunes_and_the_optimizer_follows():
    cloud, optimizer = _cloud_and_adam()
    with torch.no_grad():
        cloud.log_scales[1] = math.log(0.05)  # large: split
        cloud.opacity_logits[3] = -8.0  # nearly transparent: pruned
    before = {k: v.clone() for k, v in cloud.tensors().items()}
    moments = {k: optimizer.state[p]["exp_avg"].clone() for k, p in cloud.parameters_by_name().items()}
    control = DensityControl(DensifyConfig(grad_threshold=0.1, split_scale=0.01, min_opacity=0.005), cloud.count)
    control.grad_sum = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0, 0.0])  # 0 (small) and 1 (large) are pulled at
    control.seen = torch.tensor([2.0, 2.0, 1.0, 1.0, 0.0, 1.0])
    done = control.densify_and_prune(cloud, optimizer, torch.Generator().manual_seed(0))
    # kept: 0, 2, 4, 5 (1 was split, 3 pruned); then the clone of 0, then 1's two halves
    assert done == {"cloned": 1, "split": 1, "pruned": 1, "gaussians": 7}
    old = [0, 2, 4, 5]
    for name, param in cloud.parameters_by_name().items():
        assert optimizer.param_groups[[g["name"] for g in optimizer.param_groups].index(name)]["params"][0] is param
        state = optimizer.state[param]
        assert torch.equal(param[:4], before[name][old])
        assert torch.equal(state["exp_avg"][:4], moments[name][old])  # kept rows keep their moments
        assert (state["exp_avg"][4:] == 0).all() and (state["exp_avg_sq"][4:] == 0).all()
        assert len(optimizer.state) == 5  # no state left on the old tensors
    assert torch.equal(cloud.means[4], before["means"][0])  # the clone sits on its original
    assert torch.allclose(cloud.log_scales[5:], before["log_scales"][1].expand(2, 3) - math.log(1.6))
    halves = cloud.means[5:] - before["means"][1]
    assert 0 < halves.norm(dim=-1).max() < 0.25 and not torch.equal(cloud.means[5], cloud.means[6])
    assert control.grad_sum.shape == (7,) and control.grad_sum.sum() == 0  # statistics start again
    loss = sum(p.square().sum() for p in cloud.parameters())
    loss.backward()
    optimizer.step()  # Adam steps on the new tensors


def test_the_cap_limits_growth_to_the_largest_gradients():
    cloud, optimizer = _cloud_and_adam()
    control = DensityControl(DensifyConfig(grad_threshold=0.1, max_gaussians=8), cloud.count)
    control.grad_sum = torch.tensor([0.2, 0.9, 0.5, 0.3, 0.0, 0.0])
    control.seen = torch.ones(6)
    before = cloud.means.detach().clone()
    control.densify_and_prune(cloud, optimizer)
    assert cloud.count == 8
    assert torch.equal(cloud.means[6:], before[[1, 2]])  # the two with the largest gradients were cloned


def test_opacity_reset_lowers_opacity_and_restarts_only_its_moments():
    cloud, optimizer = _cloud_and_adam()
    moments = {k: optimizer.state[p]["exp_avg"].clone() for k, p in cloud.parameters_by_name().items()}
    DensityControl(DensifyConfig(reset_opacity=0.01), cloud.count).reset_opacity(cloud, optimizer)
    assert torch.allclose(cloud.opacities(), torch.full((6,), 0.01))
    for name, param in cloud.parameters_by_name().items():
        expected = torch.zeros_like(moments[name]) if name == "opacity_logits" else moments[name]
        assert torch.equal(optimizer.state[param]["exp_avg"], expected), name


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_moves_splats(tiny_model_dir, method):
    from prolificli.methods import build_distiller
    from prolificli.optimize import optimization_step
    from prolificli.prior import load_prior

    recipe = build_recipe(TINY_RECIPE, [f"prior.model={tiny_model_dir}", "scene.representation=gaussians",
                                        "gaussians.count=100", f"guidance.method={method}"])
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    prior = load_prior(recipe.prior)
    problem = nerf.make_problem(recipe, prior, "a red cube", generator)
    distiller = build_distiller(recipe.guidance, recipe, prior)
    before = {k: v.clone() for k, v in problem.clouds[0].tensors().items()}
    for step in range(2):
        logs = optimization_step(problem, prior.encode_images, distiller, step, generator)
        assert math.isfinite(float(logs["loss"]))
    for name, value in problem.clouds[0].tensors().items():
        assert not torch.equal(value, before[name]), f"{method} left {name} unchanged"


def splat_recipe(*extra: str):
    return build_recipe(TINY_RECIPE, ["scene.representation=gaussians", "gaussians.count=300", "nerf.steps=24",
                                      "nerf.checkpoint_every=100", "gaussians.densify.start_step=4",
                                      "gaussians.densify.every=4", "gaussians.densify.grad_threshold=0.0",
                                      "gaussians.densify.max_gaussians=500", "gaussians.densify.opacity_reset_every=12",
                                      "gaussians.densify.reset_opacity=0.01", "gaussians.densify.min_opacity=0.0101",
                                      *extra])


def test_a_run_stopped_after_a_densification_resumes_bit_identical(tiny_model_dir, tmp_path, monkeypatch):
    # with the means' learning rate decaying, so the resumed run must take up the schedule too
    recipe = splat_recipe(f"prior.model={tiny_model_dir}", "gaussians.lr_means_final=0.0001",
                          "gaussians.render.smoothing_3d=0.01")
    nerf.run(tmp_path / "reference", recipe, prompt="a red cube")
    expected = load_file(tmp_path / "reference" / "nerf" / "checkpoint" / "weights.safetensors")
    counts = [json.loads(line).get("gaussians") for line in
              (tmp_path / "reference" / "nerf" / "metrics.jsonl").read_text().splitlines()]
    assert len(set(counts)) > 2  # the count changed more than once

    calls = []

    @contextlib.contextmanager
    def stop_after_step_10(announce=lambda: None):
        yield lambda: calls.append(1) or len(calls) >= 10  # asked once per step: stop after step 10

    monkeypatch.setattr(common, "deferred_sigint", stop_after_step_10)
    with pytest.raises(Interrupted) as stopped:
        nerf.run(tmp_path / "resumed", recipe, prompt="a red cube")
    assert stopped.value.step == 10  # after the densification of step 8, before those of 12 ...
    monkeypatch.undo()
    nerf.run(tmp_path / "resumed", None, resume=True)
    got = load_file(tmp_path / "resumed" / "nerf" / "checkpoint" / "weights.safetensors")
    assert expected.keys() == got.keys()
    assert got["particle0.gaussians.means"].shape[0] != 300
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_cli_run_renders_and_evaluates(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PROLIFICLI_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    result = invoke("nerf", "a red cube", "--model", str(tiny_model_dir), "--recipe", TINY_RECIPE, "--out", str(run),
                    "--set", "scene.representation=gaussians", "--set", "gaussians.count=200", "--particles", "2")
    assert result.exit_code == 0, (result.stderr, result.exception)
    manifest = json.loads((run / "nerf" / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    # each particle as a 3DGS PLY, every Gaussian of the final checkpoint
    weights = load_file(run / "nerf" / "checkpoint" / "weights.safetensors")
    assert [o for o in manifest["outputs"] if o.endswith(".ply")] == ["splats/particle0.ply", "splats/particle1.ply"]
    for k in range(2):
        cloud = read_splat_ply(run / "nerf" / "splats" / f"particle{k}.ply")
        assert torch.allclose(cloud.means, weights[f"particle{k}.gaussians.means"])
    result = invoke("render", str(run), "--resolution", "32", "--frames", "4")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert (run / "render" / "nerf" / "turntable.gif").exists()
    result = invoke("eval", str(run), "--fid", "--clip-model", "/no/such/clip", "--fid-views", "10", "--fid-samples",
                    "10", "--sample-steps", "2", "--views", "2", "--resolution", "16", "--report",
                    str(tmp_path / "report.html"), "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert json.loads(result.stdout)[0]["fid"] > 0
    # the mesh route: the Gaussians' summed density on the tet grid
    result = invoke("extract", str(run), "--set", "extract.resolution=16")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert (run / "extract" / "mesh.ply").stat().st_size > 0
    for stage in ("geometry", "texture"):  # coloured from the splats, then textured
        result = invoke(stage, str(run), "--set", f"{stage}.steps=2")
        assert result.exit_code == 0, (stage, result.stderr, result.exception)
    assert (run / "texture" / "model.glb").exists()
    result = invoke("eval", str(run), "--geometry", "--stage", "nerf", "--json", "--report", str(tmp_path / "geo.html"))
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert 0 < json.loads(result.stdout)[0]["chamfer_pct"] < 100


def test_init_from_needs_splats(tmp_path):
    result = invoke("nerf", "a red cube", "--recipe", "toy", "--out", str(tmp_path / "r"), "--init-from", str(tmp_path))
    assert result.exit_code == 2 and "--init-from" in result.stderr


def test_the_toy_splat_recipe_takes_the_toy_recipes_mesh_stages():
    # `prolific extract | geometry | texture` on a toy-gaussians run reads the run's recipe: without
    # these sections the mesh stages would take the paper's 512 px settings against a 32 px prior
    from prolificli.recipe_files import PACKAGE_RECIPES

    toy = build_recipe(str(PACKAGE_RECIPES / "toy.yaml"), [])
    splats = build_recipe(str(PACKAGE_RECIPES / "toy-gaussians.yaml"), [])
    assert (splats.extract, splats.geometry, splats.texture) == (toy.extract, toy.geometry, toy.texture)
