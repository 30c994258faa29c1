"""Deferred back-propagation: render without a graph, backpropagate to the image, re-render in
chunks with the graph. Its parameter gradient must be the full-graph gradient."""

from __future__ import annotations

import pytest
import torch

from prolificli.cameras import sample_cameras
from prolificli.config import (BackgroundConfig, CameraConfig, FieldConfig, HashGridConfig, OccupancyConfig,
                               VolumeRenderConfig)
from prolificli.methods import build_recipe
from prolificli.render.background import Background
from prolificli.render.occupancy import OccupancyGrid
from prolificli.render.volume import render
from prolificli.scene.nerf import NeRFField

GRID = HashGridConfig(n_levels=6, log2_hashmap_size=12, base_resolution=4, per_level_scale=1.6, backend="torch")


def make_scene(seed: int = 0):
    torch.manual_seed(seed)
    field = NeRFField(FieldConfig(grid=GRID, hidden_dim=16))
    with torch.no_grad():  # a table with structure, not the near-zero init, so every gradient is sizeable
        field.grid.table.normal_(0, 0.5)
    background = Background(BackgroundConfig(kind="neural", hidden_dim=8))
    return field, background


def image_loss(out) -> torch.Tensor:
    """A loss of all three outputs, non-linear in each, with a spatial mix (like an encoder)."""
    rgb = out.rgb.permute(0, 3, 1, 2)
    mixed = torch.nn.functional.avg_pool2d(rgb, 2, stride=1)
    weights = torch.linspace(0.5, 1.5, mixed.shape[-1])
    return ((mixed * weights).square().sum() + (out.opacity ** 3).sum() + torch.sin(out.depth).sum()
            + torch.sqrt(out.opacity ** 2 + 0.01).mean())


def gradients(field, background, *, deferred: bool, resolution: int, cfg: VolumeRenderConfig,
              background_color=None, occupancy=None, seed: int = 7) -> dict[str, torch.Tensor]:
    field.zero_grad(set_to_none=True)
    background.zero_grad(set_to_none=True)
    cameras = sample_cameras(CameraConfig(), 2, generator=torch.Generator().manual_seed(3))
    out = render(field, background, cameras, resolution, resolution, cfg, background_color=background_color,
                 generator=torch.Generator().manual_seed(seed), occupancy=occupancy, deferred=deferred)
    image_loss(out).backward()
    if deferred:
        assert out.rgb.grad_fn is None and out.rgb.is_leaf  # the loss's graph ended at the image
        out.replay()
    named = {f"field.{k}": p for k, p in field.named_parameters()}
    named.update({f"background.{k}": p for k, p in background.named_parameters()})
    return {k: p.grad.detach().clone() for k, p in named.items() if p.grad is not None}


def max_relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("resolution", [12, 24])
def test_deferred_gradient_equals_the_full_graph_gradient(resolution):
    field, background = make_scene()
    # several chunks of both sizes, neither dividing the ray count, so chunks straddle images
    cfg = VolumeRenderConfig(n_coarse=16, n_fine=8, chunk_rays=97, grad_chunk_rays=61)
    full = gradients(field, background, deferred=False, resolution=resolution, cfg=cfg)
    deferred = gradients(field, background, deferred=True, resolution=resolution, cfg=cfg)
    assert set(full) == {"field.grid.table", "field.mlp.0.weight", "field.mlp.0.bias", "field.mlp.2.weight",
                         "field.mlp.2.bias", "background.mlp.0.weight", "background.mlp.0.bias",
                         "background.mlp.2.weight", "background.mlp.2.bias"}
    for name in full:
        assert full[name].abs().max() > 0, name
        assert max_relative_error(deferred[name], full[name]) <= 1e-5, name


def test_deferred_gradient_with_solid_backgrounds_and_an_occupancy_grid():
    field, background = make_scene(1)
    cfg = VolumeRenderConfig(n_coarse=16, n_fine=8, chunk_rays=128, grad_chunk_rays=50)
    grid = OccupancyGrid(OccupancyConfig(resolution=16, warmup_steps=0, threshold=0.5), field.bound)
    grid.update(field.density, step=0, generator=torch.Generator().manual_seed(0))
    assert 0.05 < grid.occupied_fraction < 0.95  # some cells skipped, some kept
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.4, 0.9]])
    full = gradients(field, background, deferred=False, resolution=16, cfg=cfg, background_color=colours,
                     occupancy=grid)
    deferred = gradients(field, background, deferred=True, resolution=16, cfg=cfg, background_color=colours,
                         occupancy=grid)
    for name in ("field.grid.table", "field.mlp.0.weight", "field.mlp.2.bias"):
        assert full[name].abs().max() > 0
        assert max_relative_error(deferred[name], full[name]) <= 1e-5, name


def test_deferred_and_full_renders_are_the_same_image():
    field, background = make_scene(2)
    cfg = VolumeRenderConfig(n_coarse=16, n_fine=8, chunk_rays=100, grad_chunk_rays=33)
    cameras = sample_cameras(CameraConfig(), 2, generator=torch.Generator().manual_seed(4))
    a = render(field, background, cameras, 10, 10, cfg, generator=torch.Generator().manual_seed(1))
    b = render(field, background, cameras, 10, 10, cfg, generator=torch.Generator().manual_seed(1), deferred=True)
    for x, y in ((a.rgb, b.rgb), (a.opacity, b.opacity), (a.depth, b.depth)):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-6, atol=1e-6)
    assert a.samples_per_ray == b.samples_per_ray == 24  # every ray of these views hits the box


def test_a_nerf_step_is_the_same_deferred_or_not(tiny_prior):
    """Two optimisation steps of the NeRF stage (VSD with the tiny prior, sparsity and opacity
    regularisers) move the particle's parameters the same with render.deferred always and never."""
    from prolificli.distill import VSD, ScoreModel
    from prolificli.optimize import optimization_step
    from prolificli.stages.nerf import NeRFParticles

    results = {}
    for mode in ("never", "always"):
        recipe = build_recipe(None, ["nerf.resolution=20", "nerf.resolution_milestones=[]", "prior.device=cpu",
                                     "nerf.field.grid.n_levels=4", "nerf.field.grid.log2_hashmap_size=12",
                                     "nerf.field.hidden_dim=16", "nerf.render.n_coarse=12", "nerf.render.n_fine=6",
                                     f"nerf.render.deferred={mode}", "nerf.render.grad_chunk_rays=64",
                                     "nerf.render.chunk_rays=150", "nerf.lambda_opaque=0.5", "score_model.lora_rank=2"])
        prior = type(tiny_prior)(tiny_prior.unet, tiny_prior.vae, tiny_prior.text_encoder, tiny_prior.tokenizer,
                                 tiny_prior.scheduler, device=tiny_prior.device, dtype=tiny_prior.dtype)
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(0)
        particles = NeRFParticles(recipe, prior, "a cube", generator)
        score_model = ScoreModel(prior, recipe.score_model)
        distiller = VSD(prior, score_model, recipe.guidance, recipe.score_model)
        initial = particles.fields[0].grid.table.detach().clone()
        logs = [optimization_step(particles, prior.encode_images, distiller, i, generator) for i in range(2)]
        assert not torch.equal(particles.fields[0].grid.table, initial)  # the steps did move theta
        # the backward ran through the VAE encoder, but no frozen weight computed a gradient
        frozen = [p for m in (prior.unet, prior.vae, prior.text_encoder) for p in m.parameters() if not p.requires_grad]
        assert frozen and all(p.grad is None for p in frozen)
        results[mode] = ({k: v.detach().clone() for k, v in particles.tensors().items()}, logs)
        tiny_prior.unet.delete_adapters("score_model")
        tiny_prior.unet.class_embedding = None
    (off, off_logs), (on, on_logs) = results["never"], results["always"]
    assert float(off_logs[0]["loss"]) == pytest.approx(float(on_logs[0]["loss"]), rel=1e-5)
    # the gradients agree to ~1e-6 relative; AdamW's first steps (about lr = 0.01 per element,
    # whatever the gradient's size) turn that into differences of ~1e-5 of a step at most
    for name in off:
        torch.testing.assert_close(on[name], off[name], rtol=1e-4, atol=1e-5, msg=name)
