"""The toy world's geometry, renders and captions, checked against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prolificli.cameras import orbit_cameras
from prolificli.toyworld.data import captions_for, make_dataset, render_object
from prolificli.toyworld.shapes import (COLOURS, SCALE, SHAPES, ToyObject, ToyObjectField, ground_truth_mesh,
                                        parse_prompt, signed_distance)
from prolificli.toyworld.train_prior import WORDS, sample_captions


def winding_number(mesh, points: np.ndarray) -> np.ndarray:
    """Generalised winding number (sum of signed solid angles / 4 pi; Van Oosterom-Strackee):
    ~1 inside a closed mesh, ~0 outside."""
    total = np.zeros(len(points))
    for start in range(0, len(mesh.faces), 512):
        tri = mesh.vertices[mesh.faces[start:start + 512]]  # [F,3,3]
        a, b, c = (tri[None, :, i, :] - points[:, None, :] for i in range(3))
        la, lb, lc = (np.linalg.norm(v, axis=-1) for v in (a, b, c))
        det = np.einsum("pfi,pfi->pf", a, np.cross(b, c))
        denom = la * lb * lc + np.einsum("pfi,pfi->pf", a, b) * lc + np.einsum("pfi,pfi->pf", b, c) * la \
            + np.einsum("pfi,pfi->pf", c, a) * lb
        total += 2 * np.arctan2(det, denom).sum(axis=1)
    return total / (4 * np.pi)


@pytest.mark.parametrize("shape", SHAPES)
def test_signed_distance_sign_agrees_with_the_mesh(shape):
    """Inside/outside from the SDF vs the winding number of the independently built mesh."""
    mesh = ground_truth_mesh(shape)
    assert mesh.is_watertight
    points = np.random.default_rng(0).uniform(-0.42, 0.42, size=(600, 3))
    sdf = signed_distance(shape, torch.tensor(points, dtype=torch.float32)).numpy()
    far_from_surface = np.abs(sdf) > 0.015  # the mesh is a faceted approximation of round shapes
    inside = np.abs(winding_number(mesh, points)) > 0.5
    agreement = ((sdf < 0) == inside)[far_from_surface].mean()
    assert agreement == 1.0, agreement
    assert (sdf < 0).mean() > 0.04  # the test is not vacuous: many points are inside


@pytest.mark.parametrize("shape", SHAPES)
def test_objects_fit_the_object_centric_bounds(shape):
    vertices = ground_truth_mesh(shape).vertices
    assert np.linalg.norm(vertices, axis=1).max() < 0.5


def test_sphere_render_matches_the_projected_disc():
    """A sphere of radius r seen from distance d covers a disc of angular radius asin(r/d)."""
    obj = ToyObject("sphere", "red")
    cameras = orbit_cameras(1, elevation_deg=0.0, distance=1.5, fovy_deg=60.0)
    out = render_object(obj, cameras, 64)
    covered = (out.opacity[0, ..., 0] > 0.5).float().mean().item()
    half_angle = np.arcsin(0.42 * SCALE / 1.5)
    # disc radius in pixels on a 64 px image whose half-height spans tan(30 deg)
    radius_px = np.tan(half_angle) / np.tan(np.radians(30)) * 32
    expected = np.pi * radius_px ** 2 / 64 ** 2
    assert covered == pytest.approx(expected, rel=0.05)


def test_shading_is_view_independent():
    """The same surface point has the same colour from any camera (Lambert, world-fixed light)."""
    field = ToyObjectField(ToyObject("cube", "green"))
    points = torch.tensor([[0.33, 0.1, 0.05], [0.0, 0.0, 0.33], [-0.2, 0.33, 0.0]]) * SCALE
    _, colour_a = field(points)
    _, colour_b = field(points.clone())
    assert torch.equal(colour_a, colour_b)
    top, side = colour_a[1], colour_a[2]  # the light comes from above: the top is brighter
    assert top.sum() > side.sum()


def test_parse_prompt_and_captions():
    assert parse_prompt("a red cube, front view") == ("cube", "red")
    assert parse_prompt("a torus") == ("torus", None)
    assert parse_prompt("a purple object, overhead view") == (None, "purple")
    assert parse_prompt("an object") == (None, None)
    assert captions_for(ToyObject("cone", "blue")) == ["a blue cone", "a cone", "a blue object", "an object"]
    assert set(WORDS) >= set(SHAPES) | set(COLOURS)


def test_dataset_records_cameras_and_labels():
    data = make_dataset(views_per_object=1, resolution=16, seed=0)
    assert data.images.shape == (36, 16, 16, 3) and data.images.dtype == torch.uint8
    assert data.c2w.shape == (36, 4, 4)
    assert data.shape_index.tolist() == [i // 6 for i in range(36)]
    assert data.colour_index.tolist() == [i % 6 for i in range(36)]
    # every object occupies part of the frame and leaves white background around it
    covered = data.opacity.float().mean(dim=(1, 2)) / 255
    assert (covered > 0.01).all() and (covered < 0.9).all()


def test_training_captions_mix_levels_suffixes_and_empty():
    generator = torch.Generator().manual_seed(0)
    index = torch.zeros(2000, dtype=torch.long)  # object 0: a red sphere
    captions = sample_captions(index, ["front view"] * 2000, generator)
    assert all(c == "" or c.split(",")[0] in captions_for(ToyObject("sphere", "red")) for c in captions)
    empty = sum(c == "" for c in captions) / len(captions)
    assert 0.07 < empty < 0.13
    assert any(c == "a red sphere, front view" for c in captions)
    assert any(c == "an object" for c in captions)


def test_white_fraction_counts_pixels_white_in_every_channel():
    from prolificli.toyworld.measures import white_fraction

    images = torch.ones(2, 3, 4, 4)
    images[0, 0, :2] = 0.5  # 8 pixels tinted in the red channel alone
    images[1, :, 0, 0] = 0.95  # near-white still counts
    assert white_fraction(images) == pytest.approx(1 - 8 / 32)


def test_speckle_closed_forms():
    from prolificli.toyworld.measures import speckle

    # flat and affine images have none: the 3x3 mean of a ramp is the ramp
    y, x = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    assert speckle(torch.ones(1, 3, 8, 8)) == pytest.approx(0.0, abs=1e-7)
    assert speckle((0.1 * x + 0.05 * y).expand(1, 3, 8, 8)) == pytest.approx(0.0, abs=1e-6)
    # a one-pixel checkerboard: each interior pixel differs from its 3x3 mean by 4/9
    checker = ((x + y) % 2).expand(1, 3, 8, 8)
    assert speckle(checker) == pytest.approx(4 / 9)
    # one bright pixel on black, inside a 6x6 interior: 8/9 at it, 1/9 at its 8 neighbours
    impulse = torch.zeros(1, 1, 8, 8)
    impulse[..., 3, 4] = 1.0
    assert speckle(impulse) == pytest.approx((8 / 9 + 8 / 9) / 36)


def test_particles_posterior_eps_is_minus_sigma_times_the_mixture_score():
    """Tweedie: E[eps | x_t] = -sigma grad log p(x_t), p the mixture of N(alpha x_i, sigma^2 I);
    the gradient here is autograd's of the mixture's log density, an independent route."""
    from prolificli.toyworld.measures import particles_posterior_eps

    torch.manual_seed(0)
    particles = torch.randn(3, 2, 4, 4)
    alpha, sigma = torch.tensor([0.8, 0.3]).view(2, 1, 1, 1), torch.tensor([0.6, 0.95]).view(2, 1, 1, 1)
    x_t = torch.randn(2, 2, 4, 4, requires_grad=True)
    squared = ((x_t[:, None] - alpha[:, None] * particles[None]) ** 2).flatten(2).sum(-1)  # [b, n]
    log_density = torch.logsumexp(-squared / (2 * sigma.view(-1, 1) ** 2), dim=1).sum()
    (score,) = torch.autograd.grad(log_density, x_t)
    expected = -sigma * score
    assert torch.allclose(particles_posterior_eps(particles, x_t.detach(), alpha, sigma), expected, atol=1e-5)
    # one particle: the posterior is certain, and the prediction is the noise that was added
    eps = torch.randn(2, 2, 4, 4)
    x_t = alpha * particles[:1] + sigma * eps
    assert torch.allclose(particles_posterior_eps(particles[:1], x_t, alpha, sigma), eps, atol=1e-5)


def test_majority_reading_counts_pairs_not_attributes():
    from prolificli.toyworld.measures import majority_reading

    # "cube" is the commonest shape and "red" the commonest colour, but no view reads a red cube
    shapes = ["cube", "cube", "sphere", "sphere", "cube"]
    colours = ["blue", "green", "red", "red", "yellow"]
    assert majority_reading(shapes, colours) == ("sphere", "red")
    assert majority_reading(["cone", "torus"], ["red", "blue"]) == ("cone", "red")  # a tie: the first view
