"""Shared fixtures: tiny random-weight diffusion models in diffusers layout, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from prolificli.config import PACKAGE_RECIPES
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


@pytest.fixture(scope="session")
def tiny_nerf_run_template(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete NeRF stage (recipes/tiny.yaml, 6 VSD steps): its field is still close to the
    object-init density blob, a sphere of radius ~0.5, which is what the mesh stages need."""
    from prolificli.methods import build_recipe
    from prolificli.stages import nerf

    recipe = build_recipe(str(PACKAGE_RECIPES / "tiny.yaml"),
                          [f"prior.model={tiny_model_dir}"])
    out = tmp_path_factory.mktemp("nerf-run") / "run"
    nerf.run(recipe, "an elephant skull", out)
    return out


@pytest.fixture
def tiny_nerf_run(tiny_nerf_run_template: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny NeRF run, for tests that add stages to it."""
    import shutil

    return Path(shutil.copytree(tiny_nerf_run_template, tmp_path / "run"))
