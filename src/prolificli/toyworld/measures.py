"""Measure a NeRF against the toy world's ground truth: what the scorer reads in its renders,
and how well its silhouette and depth match the true object from the same cameras. Also how
clean an image is: the share of white background and the local speckle; and the exact noise
prediction for a set of particles, the ideal that a score model of them tends to."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Cameras, evaluation_orbit
from ..config import Recipe
from ..render.volume import render
from .data import render_object
from .scorer import ToyScorer
from .shapes import SHAPES, ToyObject, parse_prompt


def evaluation_cameras(recipe: Recipe, views: int = 8) -> Cameras:
    """`views` azimuths around the recipe's evaluation orbit (elevation 15 deg by default)."""
    return evaluation_orbit(recipe.camera, views)


@dataclass
class ParticleReport:
    prompt_accuracy: float  # fraction of views the scorer reads as the prompt
    silhouette_iou: float | None  # None when the prompt leaves the shape open (no single truth)
    depth_error: float | None  # mean |depth - true depth| where both are opaque, world units
    shape_votes: dict[str, int]  # scorer's shape reading per view
    reading: tuple[str, str]  # the (shape, colour) the scorer reads in most views: what the particle is


def majority_reading(shapes: list[str], colours: list[str]) -> tuple[str, str]:
    """The most common (shape, colour) pair of per-view readings; ties go to the earliest view."""
    pairs = list(zip(shapes, colours))
    return max(dict.fromkeys(pairs), key=pairs.count)


def white_fraction(images: Tensor, threshold: float = 0.9) -> float:
    """The share of pixels whose every channel exceeds `threshold`: the toy world's objects sit on
    white, so a tinted or speckled background lowers it. images: [B,3,H,W] in [0,1]."""
    return (images.min(dim=1).values > threshold).float().mean().item()


def speckle(images: Tensor) -> float:
    """Mean |x - its 3x3 box average| over interior pixels and channels: 0 on any affine ramp, 4/9 on
    a one-pixel checkerboard of 0 and 1. The toy world's images are flat-shaded, so high-frequency
    noise is what raises it. images: [B,3,H,W]."""
    local_mean = F.avg_pool2d(images, 3, stride=1)  # [B,3,H-2,W-2], centred on the interior pixels
    return (images[..., 1:-1, 1:-1] - local_mean).abs().mean().item()


def particles_posterior_eps(particles: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """E[eps | x_t] when x_0 is one of `particles` [n,C,H,W], each equally likely, and
    x_t = alpha x_0 + sigma eps [b,C,H,W] (alpha, sigma [b,1,1,1]): the ideal score model of n
    particles, the one VSD's Eq. 8 tends to. p(x_0 = x_i | x_t) is the softmax over i of
    -|x_t - alpha x_i|^2 / (2 sigma^2), and E[eps | x_t] = sum_i p_i (x_t - alpha x_i) / sigma."""
    residual = x_t.float()[:, None] - alpha.float()[:, None] * particles.float()[None]  # [b,n,C,H,W]
    logits = -(residual.flatten(2) ** 2).sum(-1) / (2 * sigma.float().view(-1, 1) ** 2)  # [b,n]
    weights = logits.softmax(dim=1)[:, :, None, None, None]
    return (weights * residual).sum(1) / sigma.float()


def silhouette_iou(opacity: Tensor, true_opacity: Tensor) -> float:
    ours, truth = opacity > 0.5, true_opacity > 0.5
    union = (ours | truth).sum().item()
    return (ours & truth).sum().item() / union if union else 1.0


def depth_error(depth: Tensor, opacity: Tensor, true_depth: Tensor, true_opacity: Tensor) -> float:
    both = (opacity > 0.5) & (true_opacity > 0.5)
    if not both.any():
        return float("nan")
    # the renderer's depth is sum(w t): divide by the opacity for the surface distance
    ours = depth[both] / opacity[both]
    truth = true_depth[both] / true_opacity[both]
    return (ours - truth).abs().mean().item()


@torch.no_grad()
def evaluate_particle(field, background, recipe: Recipe, prompt: str, scorer: ToyScorer, *, views: int = 8,
                      resolution: int = 64) -> ParticleReport:
    """A NeRF particle (field, background) or a Gaussian-splat one (cloud, background)."""
    cameras = evaluation_cameras(recipe, views)
    if hasattr(field, "render"):  # a GaussianCloud draws itself
        out = field.render(background, cameras, resolution, recipe.gaussians.render)
    else:
        out = render(field, background, cameras, resolution, resolution, recipe.nerf.render, stratified=False)
    images = out.rgb.permute(0, 3, 1, 2).clamp(0, 1)
    accuracy = scorer.matches(images, prompt).float().mean().item()
    shapes, colours = scorer.classify(images)
    votes = {shape: shapes.count(shape) for shape in SHAPES if shape in shapes}
    shape, colour = parse_prompt(prompt)
    iou = error = None
    if shape is not None:
        truth = render_object(ToyObject(shape, colour or "red"), cameras, resolution)
        iou = silhouette_iou(out.opacity, truth.opacity)
        error = depth_error(out.depth, out.opacity, truth.depth, truth.opacity)
    return ParticleReport(accuracy, iou, error, votes, majority_reading(shapes, colours))


def chamfer_distance(mesh, truth, samples: int = 20000, seed: int = 0) -> float:
    """Symmetric Chamfer distance between two trimesh surfaces: the mean of the two mean
    nearest-neighbour distances between `samples` area-uniform points on each (world units)."""
    from scipy.spatial import cKDTree
    from trimesh.sample import sample_surface

    a = sample_surface(mesh, samples, seed=seed)[0]
    b = sample_surface(truth, samples, seed=seed + 1)[0]
    return 0.5 * float(cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


def object_size(shape: str) -> float:
    """The longest side of the true object's bounding box: what the Chamfer distance is compared to."""
    from .shapes import ground_truth_mesh

    return float(ground_truth_mesh(shape).extents.max())


@torch.no_grad()
def evaluate_textured_mesh(vertices: Tensor, faces: Tensor, uvs: Tensor, texture: Tensor, recipe: Recipe,
                           prompt: str, scorer: ToyScorer, *, views: int = 8, resolution: int = 64) -> ParticleReport:
    """What the scorer reads in a textured mesh rendered on white from the evaluation orbit, and its
    silhouette IoU against the true object. texture: [T,T,3] float in [0,1], row 0 = v 1."""
    from ..config import MeshRenderConfig
    from ..mesh.mesh import Mesh
    from ..render.mesh import render_mesh, sample_texture

    cameras = evaluation_cameras(recipe, views)
    mesh = Mesh(vertices, faces)
    cfg = MeshRenderConfig(backend="torch")
    out = render_mesh(mesh, cameras, resolution, cfg)
    color = sample_texture(out.interpolate(uvs), texture)
    image = out.composite(color, torch.ones_like(color))
    images = image.permute(0, 3, 1, 2).clamp(0, 1)
    accuracy = scorer.matches(images, prompt).float().mean().item()
    shapes, colours = scorer.classify(images)
    shape, colour = parse_prompt(prompt)
    iou = None
    if shape is not None:
        truth = render_object(ToyObject(shape, colour or "red"), cameras, resolution)
        iou = silhouette_iou(out.opacity, truth.opacity)
    return ParticleReport(accuracy, iou, None, {s: shapes.count(s) for s in SHAPES if s in shapes},
                          majority_reading(shapes, colours))
