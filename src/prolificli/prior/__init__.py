"""The frozen text-to-image diffusion prior (diffusers), and a tiny random one for tests."""

from .diffusion import DiffusionPrior, ModelSource, PriorLoadError
from .loading import load_prior

__all__ = ["DiffusionPrior", "ModelSource", "PriorLoadError", "load_prior"]
