"""The occupancy grid: what it skips, that it skips only what is empty, and that it follows the field."""

from __future__ import annotations

import math

import pytest
import torch

from prolificli.cameras import orbit_cameras, sample_cameras
from prolificli.config import (BackgroundConfig, CameraConfig, FieldConfig, HashGridConfig, OccupancyConfig,
                               VolumeRenderConfig)
from prolificli.render.background import Background
from prolificli.render.occupancy import OccupancyGrid
from prolificli.render.volume import render
from prolificli.scene.nerf import NeRFField
from prolificli.toyworld.shapes import ToyObject, ToyObjectField

TOY_GRID = HashGridConfig(n_levels=8, log2_hashmap_size=15, base_resolution=8, per_level_scale=1.5, backend="torch")
TOY_RENDER = VolumeRenderConfig(n_coarse=32, n_fine=16)
WHITE = BackgroundConfig(kind="solid", color=(1.0, 1.0, 1.0), random_color_prob=0.0)
TOY_CAMERAS = CameraConfig(distance=(1.35, 1.5), fovy_deg=(48.0, 52.0))


@pytest.fixture(scope="module")
def toy_nerf() -> NeRFField:
    """A NeRF of the toy world's cone fitted to 32 px renders of it: a trained field with the
    hash grid's usual haze and floaters, not an analytic one."""
    torch.manual_seed(0)
    target = ToyObjectField(ToyObject("cone", "orange"))
    field = NeRFField(FieldConfig(grid=TOY_GRID, hidden_dim=32))
    background = Background(WHITE)
    optimizer = torch.optim.Adam([{"params": field.grid.parameters(), "lr": 0.02},
                                  {"params": field.mlp.parameters(), "lr": 0.005}])
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        cameras = sample_cameras(TOY_CAMERAS, 4, generator=generator)
        with torch.no_grad():
            want = render(target, background, cameras, 32, 32, TOY_RENDER, stratified=False)
        got = render(field, background, cameras, 32, 32, TOY_RENDER, generator=generator)
        loss = (got.rgb - want.rgb).square().mean() + (got.opacity - want.opacity).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss < 0.01
    return field


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return -10 * math.log10(float((a - b).square().mean()))


@pytest.mark.slow
def test_the_occupancy_render_of_a_trained_nerf_matches_the_dense_render(toy_nerf):
    # one random point per cell and update: a cell that straddles the surface may read empty once;
    # the running max over the 8 updates that 128 training steps make catches it (one update: 37 dB)
    grid = OccupancyGrid(OccupancyConfig(resolution=64, warmup_steps=0), toy_nerf.bound)
    generator = torch.Generator().manual_seed(1)
    for step in range(8):
        grid.update(toy_nerf.density, step=step, generator=generator)
    assert grid.occupied_fraction < 0.2  # most of the box is empty around the cone
    cameras = orbit_cameras(4, elevation_deg=15.0, distance=1.4, fovy_deg=50.0)
    background = Background(WHITE)
    with torch.no_grad():
        dense = render(toy_nerf, background, cameras, 64, 64, TOY_RENDER, stratified=False)
        skipped = render(toy_nerf, background, cameras, 64, 64, TOY_RENDER, stratified=False, occupancy=grid)
    assert psnr(skipped.rgb, dense.rgb) >= 40
    assert skipped.samples_per_ray < 0.5 * dense.samples_per_ray


class RecordingField(torch.nn.Module):
    """A field that records the points it is evaluated at while gradients are being recorded."""

    def __init__(self, field: NeRFField):
        super().__init__()
        self.inner, self.bound = field, field.bound
        self.points_with_grad: list[torch.Tensor] = []

    def density(self, x):
        return self.inner.density(x)

    def forward(self, x):
        density, albedo = self.inner(x)
        if density.requires_grad:
            self.points_with_grad.append(x.detach())
        return density, albedo


@pytest.mark.slow
@pytest.mark.parametrize("deferred", [False, True])
def test_cells_marked_empty_are_never_evaluated_with_gradients(toy_nerf, deferred):
    grid = OccupancyGrid(OccupancyConfig(resolution=32, warmup_steps=0), toy_nerf.bound)
    grid.update(toy_nerf.density, step=0, generator=torch.Generator().manual_seed(2))
    field = RecordingField(toy_nerf)
    cameras = sample_cameras(TOY_CAMERAS, 3, generator=torch.Generator().manual_seed(3))
    cfg = VolumeRenderConfig(n_coarse=32, n_fine=16, chunk_rays=500, grad_chunk_rays=300)
    out = render(field, Background(WHITE), cameras, 24, 24, cfg, occupancy=grid, deferred=deferred,
                 generator=torch.Generator().manual_seed(4))
    (out.rgb.sum() + out.opacity.sum()).backward()
    if deferred:
        assert not field.points_with_grad  # the first pass runs without a graph
        out.replay()
    points = torch.cat(field.points_with_grad)
    assert len(points) > 0
    assert bool(grid.occupied_at(points).all())
    # and the dropped samples really were in empty cells or behind opaque stretches: a
    # stratified-free dense render of the same views evaluates many more points
    assert len(points) < 0.5 * 3 * 24 * 24 * 48


@pytest.mark.slow
def test_a_cell_that_a_later_step_fills_is_marked_occupied_at_the_next_update():
    torch.manual_seed(0)
    field = NeRFField(FieldConfig(grid=TOY_GRID, hidden_dim=16))
    cfg = OccupancyConfig(resolution=16, warmup_steps=10, update_every=4)
    grid = OccupancyGrid(cfg, field.bound)
    generator = torch.Generator().manual_seed(0)
    assert not grid.maybe_update(field.density, 9, generator) and grid.occupied.all()  # warm-up: all occupied
    assert grid.maybe_update(field.density, 10, generator)
    corner = torch.tensor([[0.8, -0.8, 0.8]])  # far outside the object-init blob
    assert not bool(grid.occupied_at(corner))
    for step in range(11, 40):  # several updates of an empty cell: its EMA stays near zero
        grid.maybe_update(field.density, step, generator)
    # later steps fill the cell through the field's own parameters (hash table and MLP)
    optimizer = torch.optim.Adam(field.parameters(), lr=0.05)
    cell_points = corner + (torch.rand(64, 3, generator=generator) - 0.5) * (2 / cfg.resolution)
    for _ in range(60):
        optimizer.zero_grad()
        (-torch.log(field.density(cell_points) + 1e-6).mean()).backward()
        optimizer.step()
    assert float(field.density(cell_points).detach().min()) > 10 * cfg.threshold
    assert not bool(grid.occupied_at(corner))  # not before the next update ...
    assert not grid.maybe_update(field.density, 41, generator)  # (only 2 steps after the last one)
    assert grid.maybe_update(field.density, 43, generator)
    assert bool(grid.occupied_at(corner))  # ... and at it


def test_the_grid_is_part_of_the_nerf_checkpoint(tiny_prior):
    from prolificli.methods import build_recipe
    from prolificli.stages.nerf import NeRFParticles

    recipe = build_recipe(None, ["prior.device=cpu", "nerf.field.grid.n_levels=4", "nerf.field.grid.log2_hashmap_size=12",
                                 "nerf.render.occupancy.resolution=8", "nerf.render.occupancy.warmup_steps=0"])
    particles = NeRFParticles(recipe, tiny_prior, "a cube", torch.Generator().manual_seed(0))
    grid = particles.grids[0]
    grid.update(particles.fields[0].density, step=5)
    restored = NeRFParticles(recipe, tiny_prior, "a cube", torch.Generator().manual_seed(0))
    restored.load_tensors(particles.tensors())
    assert torch.equal(restored.grids[0].occupied, grid.occupied)
    assert torch.equal(restored.grids[0].density, grid.density)
    assert restored.grids[0].last_update == 5
    assert not grid.occupied.all() and grid.occupied.any()
