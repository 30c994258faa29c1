"""DDIM sampling against diffusers' own DDIMScheduler (a second implementation)."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from prolificli.prior.sampling import ddim_step, ddim_timesteps, sample_images


def test_ddim_matches_diffusers(tiny_prior):
    scheduler = DDIMScheduler.from_config(tiny_prior.scheduler.config, clip_sample=False, set_alpha_to_one=True,
                                          timestep_spacing="leading", steps_offset=0)
    scheduler.set_timesteps(10)
    ours = ddim_timesteps(tiny_prior.num_train_timesteps, 10)
    assert ours == scheduler.timesteps.tolist()

    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 4, 16, 16, generator=generator)
    eps = torch.randn(2, 4, 16, 16, generator=generator)
    for i, t in enumerate(ours):
        t_prev = ours[i + 1] if i + 1 < len(ours) else None
        expected = scheduler.step(eps, t, x_t).prev_sample
        got = ddim_step(tiny_prior, x_t, eps, t, t_prev, clip_x0=False)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_sample_images_shapes_and_range(tiny_prior):
    images = sample_images(tiny_prior, ["a red cube", "a torus"], steps=3,
                           generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, tiny_prior.image_size, tiny_prior.image_size)
    assert images.min() >= 0 and images.max() <= 1


def test_ancestral_step_matches_diffusers_ddim_with_eta_one(tiny_prior):
    """eta = 1: the DDPM posterior's noise, the same z handed to both implementations."""
    scheduler = DDIMScheduler.from_config(tiny_prior.scheduler.config, clip_sample=False, set_alpha_to_one=True,
                                          timestep_spacing="leading", steps_offset=0)
    scheduler.set_timesteps(10)
    ours = ddim_timesteps(tiny_prior.num_train_timesteps, 10)
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 4, 16, 16, generator=generator)
    eps = torch.randn(2, 4, 16, 16, generator=generator)
    for i, t in enumerate(ours[:-1]):
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(i))
        expected = scheduler.step(eps, t, x_t, eta=1.0, variance_noise=z).prev_sample
        got = ddim_step(tiny_prior, x_t, eps, t, ours[i + 1], clip_x0=False, eta=1.0,
                        generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        assert (got - ddim_step(tiny_prior, x_t, eps, t, ours[i + 1], clip_x0=False)).abs().max() > 1e-2
