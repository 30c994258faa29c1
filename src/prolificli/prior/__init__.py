"""The frozen text-to-image diffusion prior (diffusers), and a tiny random one for tests."""

from prolificli.prior.diffusion import DiffusionPrior, PriorLoadError, load_prior

__all__ = ["DiffusionPrior", "PriorLoadError", "load_prior"]
