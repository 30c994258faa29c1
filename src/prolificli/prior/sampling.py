"""Sampling images from the prior: DDIM, deterministic or ancestral, with classifier-free guidance.

Used as the reference the distilled results are compared with (toy-world gates, FID against the
prior's own samples, the 2D mode's target distribution). Over an evenly spaced subset of the
training timesteps:

    eps    = eps_u + s (eps_c - eps_u)                    (classifier-free guidance)
    x0_hat = (x_t - sigma_t eps) / alpha_t
    x_prev = alpha_prev x0_hat + sqrt(sigma_prev^2 - s_t^2) eps + s_t z,    z ~ N(0, I)
    s_t    = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)

eta = 0 is deterministic DDIM; eta = 1 draws x_prev from the DDPM posterior q(x_prev | x_t, x0_hat),
i.e. ancestral sampling (DDIM paper, Eq. 16), which with every training timestep is DDPM itself.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .diffusion import DiffusionPrior


def ddim_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """Descending, evenly spaced ("leading" spacing, as diffusers' DDIM default)."""
    stride = num_train_timesteps // steps
    return list(range(0, stride * steps, stride))[::-1]


def ddim_step(prior: DiffusionPrior, x_t: Tensor, eps: Tensor, t: int, t_prev: int | None,
              clip_x0: bool, eta: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """One DDIM update from t to t_prev (None: to the clean image); eta 1 is ancestral."""
    batch = x_t.shape[0]
    alpha, sigma = prior.alpha_sigma(torch.full((batch,), t, device=x_t.device, dtype=torch.long))
    x0 = (x_t - sigma * eps) / alpha
    if clip_x0:
        x0 = x0.clamp(-1, 1)
        eps = (x_t - alpha * x0) / sigma  # keep the step consistent with the clipped x0
    if t_prev is None:
        return x0
    alpha_prev, sigma_prev = prior.alpha_sigma(torch.full((batch,), t_prev, device=x_t.device, dtype=torch.long))
    if eta == 0:
        return alpha_prev * x0 + sigma_prev * eps
    noise_std = eta * (sigma_prev / sigma) * (1 - (alpha / alpha_prev) ** 2).clamp(min=0).sqrt()
    z = torch.randn(x_t.shape, generator=generator).to(x_t.device)
    return alpha_prev * x0 + (sigma_prev**2 - noise_std**2).clamp(min=0).sqrt() * eps + noise_std * z


@torch.no_grad()
def sample_images(prior: DiffusionPrior, prompts: list[str], *, steps: int = 50, guidance_scale: float = 7.5,
                  negative_prompt: str = "", generator: torch.Generator | None = None, eta: float = 0.0) -> Tensor:
    """Images [B,3,H,W] in [0,1] for the prompts, at the prior's image size (eta 1: ancestral)."""
    cond = prior.encode_prompts(prompts)
    uncond = prior.encode_prompts([negative_prompt] * len(prompts))
    channels = prior.unet.config.in_channels
    size = prior.image_size // prior.vae_scale_factor
    x = torch.randn(len(prompts), channels, size, size, generator=generator).to(prior.device)
    timesteps = ddim_timesteps(prior.num_train_timesteps, steps)
    for i, t in enumerate(timesteps):
        t_batch = torch.full((len(prompts),), t, device=prior.device, dtype=torch.long)
        eps = prior.predict_eps(x, t_batch, cond, uncond, guidance_scale)
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else None
        x = ddim_step(prior, x, eps, t, t_prev, clip_x0=not prior.latent_space, eta=eta, generator=generator)
    return prior.decode(x)
