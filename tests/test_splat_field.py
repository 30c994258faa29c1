"""A splat particle as a density field (scene/splat_field.py) against a brute-force sum over every
Gaussian at every point, with covariances inverted by torch.linalg."""

from __future__ import annotations

import torch

from prolificli.render.splat import covariances_3d
from prolificli.scene.gaussians import GaussianCloud
from prolificli.scene.splat_field import SplatDensityField


def brute_force(cloud: GaussianCloud, points: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    sigma = covariances_3d(cloud.log_scales.double(), cloud.quaternions.double())
    sigma_s = sigma + smoothing ** 2 * torch.eye(3, dtype=torch.float64)
    opacity = cloud.opacities().double() * (torch.linalg.det(sigma) / torch.linalg.det(sigma_s)).sqrt()
    d = points.double()[:, None, :] - cloud.means.double()[None]  # [M,N,3]
    mahalanobis = torch.einsum("mni,nij,mnj->mn", d, torch.linalg.inv(sigma_s), d)
    terms = opacity * torch.exp(-0.5 * mahalanobis)
    density = terms.sum(1)
    return density, terms @ cloud.colors().double() / density[:, None]


def test_density_and_albedo_match_the_sum_over_every_gaussian():
    g = torch.Generator().manual_seed(0)
    n = 400
    cloud = GaussianCloud(torch.rand(n, 3, generator=g) - 0.5, torch.log(torch.rand(n, 3, generator=g) * 0.06 + 0.01),
                          torch.randn(n, 4, generator=g), torch.randn(n, generator=g), torch.randn(n, 3, generator=g))
    points = torch.rand(3000, 3, generator=g) * 1.2 - 0.6
    with torch.no_grad():
        for smoothing in (0.0, 0.02):
            expected, albedo = brute_force(cloud, points, smoothing)
            far = SplatDensityField(cloud, 1.0, smoothing, cutoff=12.0)  # every term that is not ~0
            got, got_albedo = far(points)
            assert torch.allclose(got.double(), expected, rtol=1e-4, atol=1e-6)
            dense = expected > 1e-3
            assert torch.allclose(got_albedo.double()[dense], albedo[dense], atol=1e-4)
            # cut at 3 standard deviations: each Gaussian loses at most exp(-4.5) of its peak
            near = SplatDensityField(cloud, 1.0, smoothing).density(points).double()
            assert (near <= expected + 1e-6).all() and (expected - near).max() < 0.011 * 10
