"""NeRF field, background and volume renderer against closed forms and naive re-derivations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prolificli.cameras import make_cameras, orbit_cameras, sample_cameras
from prolificli.config import (
    BackgroundConfig,
    CameraConfig,
    FieldConfig,
    HashGridConfig,
    NeRFStageConfig,
    VolumeRenderConfig,
)
from prolificli.render.background import Background
from prolificli.render.volume import (
    compositing_weights,
    intersect_box,
    render,
    render_rays,
    sample_pdf,
)
from prolificli.scene.nerf import NeRFField, density_init_bias

SMALL_GRID = HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=4, per_level_scale=2.0, backend="torch")


def small_field(**overrides) -> NeRFField:
    torch.manual_seed(0)
    return NeRFField(FieldConfig(grid=SMALL_GRID, hidden_dim=16, **overrides))


class BallField(nn.Module):
    """Constant density inside a ball (radius >= sqrt(3) * bound: the whole box), constant albedo."""

    def __init__(self, sigma: float, radius: float, bound: float = 1.0, albedo=(0.2, 0.4, 0.6)):
        super().__init__()
        self.sigma, self.radius, self.bound = sigma, radius, bound
        self.albedo = torch.tensor(albedo)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        inside_box = (x.abs() <= self.bound + 1e-5).all(-1)
        inside_ball = x.norm(dim=-1) <= self.radius
        return self.sigma * (inside_box & inside_ball).to(x.dtype)

    def forward(self, x: torch.Tensor):
        return self.density(x), self.albedo.to(x).expand(x.shape[0], 3)


def segment_by_marching(origin, direction, inside, t_min: float, t_max: float = 6.0, steps: int = 400_000):
    """(entry, length) of {t in [t_min, t_max]: inside(o + t d)} by brute force, independent of the
    slab test. Assumes the set is one interval (convex shapes)."""
    dt = (t_max - t_min) / steps
    t = t_min + (torch.arange(steps, dtype=torch.float64) + 0.5) * dt
    mask = inside(origin.double()[None] + t[:, None] * direction.double()[None])
    if not mask.any():
        return None, 0.0
    return max(float(t[mask][0]) - 0.5 * dt, t_min), float(mask.double().sum()) * dt


# ---------------------------------------------------------------------------- field


def test_density_init_bias_closed_forms():
    x = torch.tensor([[0.0, 0, 0], [0.5, 0, 0], [0, 0.3, 0.4], [1.0, 0, 0]])
    obj = density_init_bias(x, FieldConfig(density_init="object"))
    torch.testing.assert_close(obj, torch.tensor([10.0, 0.0, 0.0, -10.0]))
    scene = density_init_bias(x, FieldConfig(density_init="scene", density_init_radius=2.5))
    torch.testing.assert_close(scene, torch.tensor([-10.0, -8.0, -8.0, -6.0]))
    mixed = density_init_bias(x, FieldConfig(density_init="object-in-scene"))
    torch.testing.assert_close(mixed, torch.tensor([10.0, 0.0, 0.0, -6.0]))


def test_object_in_scene_init_is_continuous_at_five_sixths():
    cfg = FieldConfig(density_init="object-in-scene")
    r = 5.0 / 6.0
    radii = torch.tensor([r - 1e-7, r + 1e-7], dtype=torch.float64)
    x = torch.stack([radii, torch.zeros_like(radii), torch.zeros_like(radii)], dim=-1)
    inner, outer = density_init_bias(x, cfg).tolist()
    assert inner == pytest.approx(-20 / 3, abs=1e-5)
    assert outer == pytest.approx(-20 / 3, abs=1e-5)
    # and the two branches really are different functions on either side
    x_far = torch.tensor([[0.0, 0.0, 0.9]])
    assert float(density_init_bias(x_far, cfg)) == pytest.approx(-10 * (1 - 0.9 / 2.5))


def test_field_density_is_softplus_of_init_bias_and_zero_outside():
    field = small_field(bound=1.0, density_init="object")
    with torch.no_grad():  # a silent decoder leaves only the initialisation
        field.mlp[-1].weight.zero_()
        field.mlp[-1].bias.zero_()
    x = torch.tensor([[0.0, 0, 0], [0.2, -0.3, 0.1], [0.99, 0.99, -0.99], [1.01, 0, 0], [0, 0, -3.0]])
    density, albedo = field(x)
    radius = x.norm(dim=-1)
    expected = torch.log1p(torch.exp(10 * (1 - radius / 0.5)))
    expected[3:] = 0
    torch.testing.assert_close(density, expected)
    torch.testing.assert_close(albedo, torch.full((5, 3), 0.5))
    torch.testing.assert_close(field.density(x), density)


def test_field_output_ranges_and_param_groups():
    field = small_field(bound=2.0)
    x = (torch.rand(500, 3) * 2 - 1) * 2.5
    density, albedo = field(x)
    assert density.shape == (500,) and albedo.shape == (500, 3)
    assert torch.all(density >= 0) and torch.all((albedo >= 0) & (albedo <= 1))
    stage = NeRFStageConfig(lr_grid=0.01, lr_heads=0.001)
    groups = field.param_groups(stage)
    assert [g["lr"] for g in groups] == [0.01, 0.001]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in field.parameters())
    assert any(p is field.grid.table for p in groups[0]["params"])
    torch.optim.AdamW(groups)  # a valid optimizer spec


# ---------------------------------------------------------------------------- background


def test_backgrounds():
    directions = torch.randn(2, 5, 7, 3)
    neural = Background(BackgroundConfig(kind="neural", hidden_dim=8))
    rgb = neural(directions)
    assert rgb.shape == (2, 5, 7, 3) and torch.all((rgb > 0) & (rgb < 1))
    torch.testing.assert_close(neural(directions * 3.0), rgb)  # a function of the direction only
    rgb.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in neural.parameters())
    solid = Background(BackgroundConfig(kind="solid", color=(0.1, 0.2, 0.3)))
    assert len(list(solid.parameters())) == 0
    torch.testing.assert_close(solid(directions), torch.tensor([0.1, 0.2, 0.3]).expand(2, 5, 7, 3))


# ---------------------------------------------------------------------------- renderer pieces


def test_intersect_box_known_cases():
    origins = torch.tensor([[3.0, 0.2, -0.5], [0.0, 0.0, 0.0], [3.0, 3.0, 0.0], [0.5, 0.5, 3.0]])
    directions = torch.tensor([[-1.0, 0, 0], [0, 1.0, 0], [-1.0, 0, 0], [0, 0, -1.0]])
    t_near, t_far, hit = intersect_box(origins, directions, bound=1.0, near=0.01)
    assert hit.tolist() == [True, True, False, True]
    torch.testing.assert_close(t_near[[0, 1, 3]], torch.tensor([2.0, 0.01, 2.0]))  # inside: clamped to near
    torch.testing.assert_close(t_far[[0, 1, 3]], torch.tensor([4.0, 1.0, 4.0]))


def test_compositing_weights_match_cumprod_formula():
    torch.manual_seed(0)
    density = torch.rand(6, 20, dtype=torch.float64) * 5
    deltas = torch.rand(6, 20, dtype=torch.float64) * 0.2
    alpha = 1 - torch.exp(-density * deltas)
    expected = torch.zeros_like(alpha)
    for r in range(6):
        transmittance = 1.0
        for i in range(20):
            expected[r, i] = transmittance * alpha[r, i]
            transmittance *= 1 - alpha[r, i]
    torch.testing.assert_close(compositing_weights(density, deltas), expected)


def test_sample_pdf_follows_the_weights():
    edges = torch.linspace(0.0, 4.0, 5).expand(2, 5).contiguous()  # bins [0,1],[1,2],[2,3],[3,4]
    weights = torch.tensor([[0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    generator = torch.Generator().manual_seed(0)
    samples = sample_pdf(edges, weights, 4000, stratified=True, generator=generator)
    in_third_bin = ((samples[0] >= 2) & (samples[0] <= 3)).double().mean()
    assert float(in_third_bin) > 0.99  # 1e-5 floor on the other bins
    histogram = torch.histc(samples[1], bins=4, min=0, max=4) / 4000
    torch.testing.assert_close(histogram, torch.full((4,), 0.25), atol=0.01, rtol=0)
    even = sample_pdf(edges[1:], weights[1:], 8, stratified=False)
    torch.testing.assert_close(even[0], (torch.arange(8) + 0.5) / 2, atol=1e-3, rtol=0)


# ---------------------------------------------------------------------------- rendering


def test_constant_density_box_has_closed_form_opacity_and_depth():
    sigma = 1.3
    field = BallField(sigma, radius=10.0)  # the ball covers the box: constant inside the box
    cfg = VolumeRenderConfig(n_coarse=64, n_fine=32, near=0.01)
    generator = torch.Generator().manual_seed(0)
    cameras = sample_cameras(CameraConfig(distance=(0.5, 2.0)), 4, generator=generator)  # some inside the box
    origins, directions = cameras.rays(6, 6)
    origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
    out = render_rays(field, origins, directions, cfg, generator=generator, stratified=True)
    in_box = lambda p: (p.abs() <= 1.0).all(-1)
    checked = 0
    for r in range(0, origins.shape[0], 7):
        entry, chord = segment_by_marching(origins[r], directions[r], in_box, t_min=cfg.near)
        assert float(out["opacity"][r]) == pytest.approx(1 - math.exp(-sigma * chord), abs=1e-4)
        if chord > 0:
            # expected depth of an exponential distribution truncated to [t0, t0 + L]
            decay = math.exp(-sigma * chord)
            depth = entry * (1 - decay) + (1 - decay) / sigma - chord * decay
            assert float(out["depth"][r]) == pytest.approx(depth, abs=2e-3)
            torch.testing.assert_close(out["rgb"][r], field.albedo * out["opacity"][r])
            checked += 1
    assert checked >= 10


def test_ball_opacity_follows_the_chord_through_the_sphere():
    sigma, radius = 2.0, 0.8
    field = BallField(sigma, radius=radius)
    cfg = VolumeRenderConfig(n_coarse=64, n_fine=32)
    impact = torch.linspace(0.0, 0.75, 8)  # distance of each ray from the centre
    origins = torch.stack([torch.full_like(impact, -3.0), impact, torch.zeros_like(impact)], dim=-1)
    directions = torch.tensor([1.0, 0.0, 0.0]).expand(8, 3)
    out = render_rays(field, origins, directions, cfg, stratified=False)
    chord = 2 * torch.sqrt(radius**2 - impact**2)
    torch.testing.assert_close(out["opacity"][:, 0], 1 - torch.exp(-sigma * chord), atol=1.5e-2, rtol=0)


def test_empty_field_shows_the_background():
    field = BallField(0.0, radius=10.0)
    background = Background(BackgroundConfig(kind="neural", hidden_dim=8))
    cameras = orbit_cameras(2, elevation_deg=10.0, distance=1.3, fovy_deg=50.0)
    cfg = VolumeRenderConfig(n_coarse=16, n_fine=8)
    out = render(field, background, cameras, 8, 8, cfg)
    assert torch.all(out.opacity == 0)
    _, directions = cameras.rays(8, 8)
    torch.testing.assert_close(out.rgb, background(directions))
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 1.0]])
    solid = render(field, background, cameras, 8, 8, cfg, background_color=colours)
    torch.testing.assert_close(solid.rgb, colours[:, None, None, :].expand(2, 8, 8, 3))


def test_rays_that_miss_the_box_are_transparent():
    field = BallField(5.0, radius=10.0)
    origins = torch.tensor([[3.0, 3.0, 0.0], [3.0, 0.0, 0.0]])
    directions = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    out = render_rays(field, origins, directions, VolumeRenderConfig(n_coarse=16, n_fine=8))
    assert float(out["opacity"][0]) == 0 and float(out["depth"][0]) == 0
    assert torch.all(out["rgb"][0] == 0)
    assert float(out["opacity"][1]) == pytest.approx(1 - math.exp(-10), abs=1e-5)


def test_gradients_reach_field_and_background_and_batch_shapes():
    field = small_field()
    background = Background(BackgroundConfig(kind="neural", hidden_dim=8))
    cameras = sample_cameras(CameraConfig(), 2, generator=torch.Generator().manual_seed(1))
    cfg = VolumeRenderConfig(n_coarse=16, n_fine=8)
    out = render(field, background, cameras, 12, 10, cfg, generator=torch.Generator().manual_seed(2))
    assert out.rgb.shape == (2, 12, 10, 3)
    assert out.opacity.shape == out.depth.shape == (2, 12, 10, 1)
    assert torch.all((out.rgb >= 0) & (out.rgb <= 1 + 1e-6))
    assert torch.all((out.opacity >= 0) & (out.opacity <= 1 + 1e-6))
    assert out.opacity.max() > 0.5  # the object init makes a visible blob
    (out.rgb.square().mean() + out.opacity.mean()).backward()
    assert field.grid.table.grad is not None and field.grid.table.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in field.mlp.parameters())
    assert all(p.grad is not None for p in background.parameters())


def test_chunked_render_without_grad_equals_unchunked():
    field = small_field()
    background = Background(BackgroundConfig(kind="solid"))
    cameras = sample_cameras(CameraConfig(), 2, generator=torch.Generator().manual_seed(3))
    whole = VolumeRenderConfig(n_coarse=16, n_fine=8, chunk_rays=1_000_000)
    chunked = VolumeRenderConfig(n_coarse=16, n_fine=8, chunk_rays=37)
    with torch.no_grad():
        a = render(field, background, cameras, 9, 11, whole, stratified=False)
        b = render(field, background, cameras, 9, 11, chunked, stratified=False)
    c = render(field, background, cameras, 9, 11, whole, stratified=False)  # with grad: unchunked
    for x, y in [(a, b), (a, c)]:
        torch.testing.assert_close(x.rgb, y.rgb.detach())
        torch.testing.assert_close(x.opacity, y.opacity.detach())
        torch.testing.assert_close(x.depth, y.depth.detach())


def test_stratified_sampling_is_reproducible_with_a_generator():
    field = small_field()
    background = Background(BackgroundConfig(kind="solid"))
    cameras = make_cameras(torch.tensor([1.2]), torch.tensor([50.0]), torch.tensor([10.0]), torch.tensor([30.0]))
    cfg = VolumeRenderConfig(n_coarse=8, n_fine=4)
    with torch.no_grad():
        runs = [
            render(field, background, cameras, 6, 6, cfg, generator=torch.Generator().manual_seed(s)).depth
            for s in (5, 5, 6)
        ]
    torch.testing.assert_close(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert F.mse_loss(runs[0], runs[2]) < 1e-2  # jitter moves samples, not the picture
