"""The frozen text-to-image diffusion prior (diffusers), and a tiny random one for tests."""

from prolificli.prior.diffusion import DiffusionPrior, ModelSource, PriorLoadError
from prolificli.prior.loading import load_prior

__all__ = ["DiffusionPrior", "ModelSource", "PriorLoadError", "load_prior"]
