"""A Gaussian-splat particle: N 3D Gaussians, each a mean, log-scales, a rotation quaternion (w
first), an opacity logit and an RGB albedo logit. Like the paper's NeRF it has no view dependence
(no spherical harmonics) and no shading: the albedo is the colour.

The parameters are plain tensors of N rows, so density control (scene/densify.py) can add and
remove rows; `load_tensors` takes a checkpoint's, whatever its N.

Initialisation (the paper's density init, Sec. 4.2, carried over to splats):
- "object": means uniform in the ball of init_radius (a blob at the centre, as the NeRF's
  object init), each scale the mean spacing of that many points in that ball;
- "scene": means uniform in the shell from init_radius to the box's corner distance, so the
  camera sits in an empty middle (the NeRF's hollow scene init);
- "nerf" (`from_nerf`): where a trained NeRF particle is dense, coloured by it.
Every Gaussian starts isotropic (identity rotation) with opacity init_opacity and a colour near
mid grey: a little noise per Gaussian, plus (init_color_std) a smooth random field drawn afresh for
each particle, so particles differ as much as random-weight NeRFs do.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..cameras import Cameras
from ..config import GaussiansConfig, SplatRenderConfig
from ..render.splat import SplatOutput, render_gaussians

PARAMETERS = ("means", "log_scales", "quaternions", "opacity_logits", "color_logits")


def _logit(p: Tensor) -> Tensor:
    return torch.log(p) - torch.log1p(-p)


def smooth_random_field(points: Tensor, std: float, length: float, generator: torch.Generator | None = None,
                        features: int = 64) -> Tensor:
    """One draw of a smooth random RGB field at points [N,3] -> [N,3]: random Fourier features
    (Rahimi and Recht 2007) of a Gaussian process with the kernel std^2 exp(-|x - y|^2 / (2 length^2)),
    std * sqrt(2 / K) * sum_k w_k cos(omega_k . x + phi_k), w_k ~ N(0, 1), omega_k ~ N(0, I / length^2),
    phi_k ~ U(0, 2 pi). Each term has variance 1/2 over draws, so every point has std `std` per channel."""
    omega = torch.randn(features, 3, generator=generator) / length
    phase = 2 * math.pi * torch.rand(features, generator=generator)
    weights = torch.randn(features, 3, generator=generator)
    return std * math.sqrt(2 / features) * torch.cos(points @ omega.T + phase) @ weights


class GaussianCloud(nn.Module):
    def __init__(self, means: Tensor, log_scales: Tensor, quaternions: Tensor, opacity_logits: Tensor,
                 color_logits: Tensor):
        super().__init__()
        self.means = nn.Parameter(means)  # [N,3] world
        self.log_scales = nn.Parameter(log_scales)  # [N,3]
        self.quaternions = nn.Parameter(quaternions)  # [N,4] (w, x, y, z), normalised when used
        self.opacity_logits = nn.Parameter(opacity_logits)  # [N]
        self.color_logits = nn.Parameter(color_logits)  # [N,3]

    @property
    def count(self) -> int:
        return self.means.shape[0]

    def colors(self) -> Tensor:
        return torch.sigmoid(self.color_logits)

    def opacities(self) -> Tensor:
        return torch.sigmoid(self.opacity_logits)

    def scales(self) -> Tensor:
        return self.log_scales.exp()

    def render(self, background, cameras: Cameras, resolution: int, cfg: SplatRenderConfig,
               background_color: Tensor | None = None) -> SplatOutput:
        """rgb, opacity and depth [B,R,R,*] from `cameras`, over `background` (or background_color [B,3])."""
        log_scales, opacity_logits = self.smoothed(cfg.smoothing_3d)
        args = (self.means, log_scales, self.quaternions, opacity_logits, self.colors(), background,
                cameras, resolution, resolution)
        if cfg.backend == "gsplat":
            from ..render.gsplat_backend import render_gaussians_gsplat  # CUDA: imported only when chosen

            return render_gaussians_gsplat(*args, cfg, background_color=background_color)
        return render_gaussians(*args, cfg, background_color=background_color)

    def smoothed(self, std: float) -> tuple[Tensor, Tensor]:
        """log-scales and opacity logits [N,3], [N] after Mip-Splatting's 3D filter: Sigma + std^2 I
        (the same rotation, each axis' variance plus std^2), opacity times
        sqrt(det Sigma / det(Sigma + std^2 I)), so a Gaussian far below std becomes a faint blob
        of std rather than a bright point. std 0: the parameters unchanged."""
        if std <= 0:
            return self.log_scales, self.opacity_logits
        variance = torch.exp(2 * self.log_scales)
        smoothed = variance + std ** 2
        log_mass = 0.5 * (torch.log(variance) - torch.log(smoothed)).sum(-1)  # log sqrt(det ratio) <= 0
        opacity = (torch.nn.functional.logsigmoid(self.opacity_logits) + log_mass).exp().clamp(max=1 - 1e-6)
        return 0.5 * torch.log(smoothed), torch.log(opacity) - torch.log1p(-opacity)

    def parameters_by_name(self) -> dict[str, nn.Parameter]:
        return {name: getattr(self, name) for name in PARAMETERS}

    def param_groups(self, cfg: GaussiansConfig) -> list[dict]:
        lrs = {"means": cfg.lr_means, "log_scales": cfg.lr_log_scales, "quaternions": cfg.lr_quaternions,
               "opacity_logits": cfg.lr_opacity, "color_logits": cfg.lr_colors}
        return [{"name": name, "params": [param], "lr": lrs[name]} for name, param in self.parameters_by_name().items()]

    def tensors(self) -> dict[str, Tensor]:
        return {name: param.detach() for name, param in self.parameters_by_name().items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> GaussianCloud:
        """A cloud from `tensors()`' dictionary (a checkpoint's part)."""
        return cls(*(tensors[name] for name in PARAMETERS))

    def load_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Take a checkpoint's tensors, of any N. New Parameter objects: rebuild the optimiser after."""
        for name in PARAMETERS:
            setattr(self, name, nn.Parameter(tensors[name].to(self.means.device, self.means.dtype).clone()))

    @classmethod
    def initial(cls, cfg: GaussiansConfig, bound: float, generator: torch.Generator | None = None) -> GaussianCloud:
        """cfg.count Gaussians placed by cfg.init ("object" or "scene"; "nerf" is `from_nerf`)."""
        n = cfg.count
        direction = torch.randn(n, 3, generator=generator)
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        u = torch.rand(n, 1, generator=generator)
        if cfg.init == "object":
            inner, outer = 0.0, cfg.init_radius
        elif cfg.init == "scene":
            inner, outer = cfg.init_radius, bound * math.sqrt(3)
        else:
            raise ValueError(f"gaussians.init {cfg.init!r} is not a placement of its own (use from_nerf)")
        # uniform in volume between the two radii: r^3 uniform
        radius = (inner ** 3 + u * (outer ** 3 - inner ** 3)) ** (1 / 3)
        means = direction * radius
        volume = 4 / 3 * math.pi * (outer ** 3 - inner ** 3)
        spacing = (volume / n) ** (1 / 3)
        colors = 0.5 + 0.05 * torch.randn(n, 3, generator=generator)
        if cfg.init_color_std > 0:
            colors = colors + smooth_random_field(means, cfg.init_color_std, cfg.init_color_length, generator)
        return cls._isotropic(means, spacing, cfg.init_opacity, colors)

    @classmethod
    def _isotropic(cls, means: Tensor, scale: float | Tensor, opacity: float | Tensor, colors: Tensor) -> GaussianCloud:
        n = means.shape[0]
        log_scales = torch.log(torch.as_tensor(scale, dtype=means.dtype)).expand(n).clone()[:, None].repeat(1, 3)
        quaternions = torch.zeros(n, 4, dtype=means.dtype)
        quaternions[:, 0] = 1
        opacity_logits = _logit(torch.as_tensor(opacity, dtype=means.dtype).expand(n).clone())
        color_logits = _logit(colors.clamp(0.02, 0.98))
        return cls(means, log_scales, quaternions, opacity_logits, color_logits)

    @classmethod
    @torch.no_grad()
    def from_nerf(cls, field, cfg: GaussiansConfig, generator: torch.Generator | None = None,
                  candidates_per_gaussian: int = 8) -> GaussianCloud:
        """cfg.count Gaussians where a NeRF field (density, albedo) is dense: candidates uniform in
        its box, drawn among the dense ones with probability proportional to the opacity a cell of
        the Gaussians' spacing would have there, each coloured by the field's albedo at that point,
        with that cell's opacity (within [init_opacity, 0.9])."""
        n, bound = cfg.count, field.bound
        device = next(field.parameters()).device
        points = (torch.rand(n * candidates_per_gaussian, 3, generator=generator) * 2 - 1) * bound
        density = torch.cat([field.density(chunk.to(device)).cpu() for chunk in points.split(1 << 16)])
        # dense: where a cell of the Gaussians' spacing would be at least half opaque; that spacing is
        # the one of n points in the volume so filled (a fixed point, a few iterations suffice)
        spacing = (8 * bound ** 3 / n) ** (1 / 3)
        for _ in range(4):
            alpha = 1 - torch.exp(-density * spacing)
            dense = alpha >= min(0.5, float(alpha.max()) / 2)
            if float(alpha.max()) <= 0:
                raise ValueError("the NeRF is empty: no density to place Gaussians on")
            spacing = (8 * bound ** 3 * float(dense.float().mean()) / n) ** (1 / 3)
        weights = torch.where(dense, 1 - torch.exp(-density * spacing), torch.zeros_like(density))
        chosen = torch.multinomial(weights, n, replacement=bool(weights.count_nonzero() < n), generator=generator)
        alpha = weights
        means = points[chosen] + (torch.rand(n, 3, generator=generator) - 0.5) * spacing  # no two alike
        colors = torch.cat([field(chunk.to(device))[1].cpu() for chunk in means.split(1 << 16)])
        opacity = alpha[chosen].clamp(min=cfg.init_opacity, max=0.9)
        return cls._isotropic(means, spacing / 2, opacity, colors)
