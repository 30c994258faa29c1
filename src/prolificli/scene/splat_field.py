"""A Gaussian-splat particle as a density field, for the mesh route (`prolific extract`,
`eval --geometry`), which needs what a NeRF field offers: density(x) and (density, albedo)(x).

    density(x) = sum_i o_i exp(-1/2 (x - mu_i)^T Sigma_i^-1 (x - mu_i))

the opacity-weighted sum of the Gaussians (after the 3D smoothing filter the renderer applies),
and the albedo at x is the mean of their colours weighted by each one's term. Each Gaussian is
cut off at `cutoff` standard deviations of its widest axis (3: terms below o * 0.011 are dropped),
found with a k-d tree over the query points, so the cost is the number of (point, Gaussian) pairs
within reach, not points times Gaussians.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..render.splat import quaternion_to_rotation
from .gaussians import GaussianCloud

PAIRS_PER_CHUNK = 1 << 22  # (point, Gaussian) pairs evaluated at once: bounds the memory


class SplatDensityField:
    def __init__(self, cloud: GaussianCloud, bound: float, smoothing_3d: float = 0.0, cutoff: float = 3.0):
        with torch.no_grad():
            log_scales, opacity_logits = cloud.smoothed(smoothing_3d)
            self.means = cloud.means.detach().float().cpu()
            rotation = quaternion_to_rotation(cloud.quaternions.detach().float().cpu())  # [N,3,3]
            inverse_scales = torch.exp(-log_scales.detach().float().cpu())
            # Sigma^-1 = R S^-2 R^T: the Mahalanobis distance is |S^-1 R^T d|
            self.whiten = rotation.transpose(1, 2) * inverse_scales[:, :, None]  # [N,3,3] S^-1 R^T
            self.opacities = torch.sigmoid(opacity_logits.detach().float().cpu())
            self.colors = cloud.colors().detach().float().cpu()
            self.reach = cutoff * log_scales.detach().float().cpu().amax(-1).exp()
        self.bound = bound

    def to(self, device) -> SplatDensityField:
        """As a NeRF field's .to: this one computes on the CPU (its k-d tree) and returns its
        results on the device of the points it is given."""
        return self

    def density(self, points: Tensor) -> Tensor:
        return self(points)[0]

    @torch.no_grad()
    def __call__(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """density [M] and albedo [M,3] at points [M,3]."""
        from scipy.spatial import cKDTree

        device, dtype = points.device, points.dtype
        x = points.detach().float().cpu()
        density = torch.zeros(len(x))
        weighted = torch.zeros(len(x), 3)
        if len(x) == 0 or len(self.means) == 0:
            return density.to(device, dtype), weighted.to(device, dtype)
        tree = cKDTree(x.numpy())
        # Gaussians in groups sized so their pairs about fill a chunk, judged from the last group's pairs
        start, step = 0, 1024
        while start < len(self.means):
            stop = min(start + step, len(self.means))
            found = tree.query_ball_point(self.means[start:stop].numpy(), self.reach[start:stop].numpy(),
                                          return_sorted=False)
            counts = torch.tensor([len(f) for f in found])
            pairs = int(counts.sum())
            if pairs > 0:
                point = torch.from_numpy(np.concatenate([np.asarray(f, dtype=np.int64) for f in found]))
                gaussian = torch.repeat_interleave(torch.arange(start, stop), counts)
                for lo in range(0, len(point), PAIRS_PER_CHUNK):
                    p, g = point[lo:lo + PAIRS_PER_CHUNK], gaussian[lo:lo + PAIRS_PER_CHUNK]
                    d = torch.einsum("pij,pj->pi", self.whiten[g], x[p] - self.means[g])
                    term = self.opacities[g] * torch.exp(-0.5 * d.square().sum(-1))
                    density.index_add_(0, p, term)
                    weighted.index_add_(0, p, term[:, None] * self.colors[g])
            start = stop
            step = max(1, min(step * 4, int(step * PAIRS_PER_CHUNK / max(pairs, 1))))
        albedo = torch.where(density[:, None] > 0, weighted / density.clamp(min=1e-12)[:, None],
                             torch.full_like(weighted, 0.5))
        return density.to(device, dtype), albedo.to(device, dtype)
