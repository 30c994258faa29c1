"""Sampling images from the prior with diffusers' own schedulers, with classifier-free guidance.

Used as the reference the distilled results are compared with (toy-world gates, FID against the
prior's own samples, the 2D mode's target distribution). The schedulers are diffusers':

    ddim       DDIMScheduler: eta = 0 is deterministic DDIM, eta = 1 draws x_prev from the DDPM
               posterior q(x_prev | x_t, x0_hat), i.e. ancestral sampling (DDIM paper, Eq. 16)
    dpm++      DPMSolverMultistepScheduler (DPM-Solver++, second order): as good in fewer steps

What is ours is the settings they get (`scheduler_for`), which the tests pin: the prior's own
noise schedule and prediction type, "leading" timestep spacing, the last step to the clean
image (set_alpha_to_one), and x0 clipped to [-1, 1] for a pixel-space model only.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .diffusion import DiffusionPrior

Sampler = Literal["ddim", "dpm++"]


def scheduler_for(prior: DiffusionPrior, sampler: Sampler = "ddim"):
    """A fresh diffusers scheduler for sampling from `prior`."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    config = prior.scheduler.config
    if sampler == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=not prior.latent_space, clip_sample_range=1.0,
                                         set_alpha_to_one=True, timestep_spacing="leading", steps_offset=0,
                                         prediction_type="epsilon")
    if sampler == "dpm++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                       thresholding=False, timestep_spacing="leading",
                                                       steps_offset=0, prediction_type="epsilon",
                                                       final_sigmas_type="zero", lower_order_final=True)
    raise ValueError(f"unknown sampler {sampler!r} (ddim or dpm++)")


@torch.no_grad()
def sample_images(prior: DiffusionPrior, prompts: list[str], *, steps: int = 50, guidance_scale: float = 7.5,
                  negative_prompt: str = "", generator: torch.Generator | None = None, eta: float = 0.0,
                  sampler: Sampler = "ddim") -> Tensor:
    """Images [B,3,H,W] in [0,1] for the prompts, at the prior's image size (ddim with eta 1: ancestral).
    The model's output is handed to the scheduler as eps (the prior converts whatever it predicts)."""
    scheduler = scheduler_for(prior, sampler)
    scheduler.set_timesteps(steps)
    cond = prior.encode_prompts(prompts)
    uncond = prior.encode_prompts([negative_prompt] * len(prompts))
    channels = prior.unet.config.in_channels
    size = prior.image_size // prior.vae_scale_factor
    x = torch.randn(len(prompts), channels, size, size, generator=generator).to(prior.device)
    # DDIM: the eps step consistent with a clipped x0 (pixel models), as the paper's update
    options = {"eta": eta, "use_clipped_model_output": True} if sampler == "ddim" else {}
    for t in scheduler.timesteps:
        t_batch = torch.full((len(prompts),), int(t), device=prior.device, dtype=torch.long)
        eps = prior.predict_eps(x, t_batch, cond, uncond, guidance_scale)
        if sampler == "ddim" and eta > 0:  # the noise from our generator, drawn on the CPU as before
            options["variance_noise"] = torch.randn(x.shape, generator=generator).to(x.device)
        x = scheduler.step(eps, t, x, **options).prev_sample
    return prior.decode(x)
