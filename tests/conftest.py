"""Shared fixtures: tiny random-weight diffusion models in diffusers layout, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from prolificli.config import PriorConfig


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A latent model: 2x VAE, UNet on 4x16x16 latents, image_size 32, epsilon prediction."""
    from prolificli.prior.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-latent"), latent=True)


@pytest.fixture(scope="session")
def tiny_pixel_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pixel model: no VAE, UNet on 3x32x32 images, epsilon prediction."""
    from prolificli.prior.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-pixel"), latent=False)


@pytest.fixture
def tiny_prior(tiny_model_dir: Path):
    """A fresh DiffusionPrior on CPU in float32 per test, so tests may attach adapters to it."""
    from prolificli.prior import load_prior

    return load_prior(PriorConfig(model=str(tiny_model_dir), device="cpu", dtype="float32"))
