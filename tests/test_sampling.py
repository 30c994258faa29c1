"""Prior sampling runs on diffusers' schedulers; what is ours is the settings we pass them, and
those are checked against the DDIM update written out here (DDIM paper, Eq. 12 and 16)."""

from __future__ import annotations

import pytest
import torch

from prolificli.prior.sampling import sample_images, scheduler_for


def ddim_reference(prior, x_t, eps, t: int, t_prev: int | None, clip_x0: bool, eta: float = 0.0, z=None):
    """One DDIM update from t to t_prev (None: to the clean image), written from the paper."""
    abar = prior.alphas_cumprod
    alpha, sigma = abar[t].sqrt(), (1 - abar[t]).sqrt()
    x0 = (x_t - sigma * eps) / alpha
    if clip_x0:
        x0 = x0.clamp(-1, 1)
        eps = (x_t - alpha * x0) / sigma
    if t_prev is None:
        return x0
    alpha_prev, sigma_prev = abar[t_prev].sqrt(), (1 - abar[t_prev]).sqrt()
    std = eta * (sigma_prev / sigma) * (1 - abar[t] / abar[t_prev]).clamp(min=0).sqrt()
    out = alpha_prev * x0 + (sigma_prev**2 - std**2).clamp(min=0).sqrt() * eps
    return out + std * z if eta > 0 else out


@pytest.mark.parametrize("latent", [True, False])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_the_ddim_settings_give_the_papers_update(tiny_prior, tiny_pixel_model_dir, latent, eta):
    from prolificli.config import PriorConfig
    from prolificli.prior import load_prior

    prior = tiny_prior if latent else load_prior(PriorConfig(model=str(tiny_pixel_model_dir), device="cpu",
                                                             dtype="float32"))
    scheduler = scheduler_for(prior, "ddim")
    scheduler.set_timesteps(10)
    timesteps = scheduler.timesteps.tolist()
    stride = prior.num_train_timesteps // 10
    assert timesteps == list(range(0, stride * 10, stride))[::-1]  # "leading" spacing, no offset
    channels = prior.unet.config.in_channels
    size = prior.image_size // prior.vae_scale_factor
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, channels, size, size, generator=generator) * 2  # large enough for x0 to clip
    eps = torch.randn(2, channels, size, size, generator=generator)
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else None
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(i))
        got = scheduler.step(eps, t, x_t, eta=eta, variance_noise=z, use_clipped_model_output=True).prev_sample
        expected = ddim_reference(prior, x_t, eps, t, t_prev, clip_x0=not latent, eta=eta, z=z)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler", ["ddim", "dpm++"])
def test_sample_images_shapes_and_range(tiny_prior, sampler):
    images = sample_images(tiny_prior, ["a red cube", "a torus"], steps=3, sampler=sampler,
                           generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, tiny_prior.image_size, tiny_prior.image_size)
    assert images.min() >= 0 and images.max() <= 1


def test_ancestral_sampling_draws_and_deterministic_does_not(tiny_prior):
    def draw(eta: float, seed: int) -> torch.Tensor:
        return sample_images(tiny_prior, ["a red cube"], steps=4, eta=eta, generator=torch.Generator().manual_seed(seed))

    torch.testing.assert_close(draw(0.0, 0), draw(0.0, 0))
    torch.testing.assert_close(draw(1.0, 0), draw(1.0, 0))  # reproducible from the seed
    assert (draw(1.0, 0) - draw(0.0, 0)).abs().max() > 1e-3


def test_the_dpm_solver_settings(tiny_prior):
    scheduler = scheduler_for(tiny_prior, "dpm++")
    config = scheduler.config
    assert (config.algorithm_type, config.solver_order, config.prediction_type) == ("dpmsolver++", 2, "epsilon")
    assert config.final_sigmas_type == "zero" and config.timestep_spacing == "leading"
    with pytest.raises(ValueError, match="unknown sampler"):
        scheduler_for(tiny_prior, "euler")
