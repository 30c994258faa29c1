"""The 2D mode: each particle theta_i is one image in the prior's own space, g(theta, c) = theta.

With the identity "renderer" the distillation methods can be compared with no 3D at all: what a
method converges to is then a distribution of images, which ancestral sampling from the prior
shows directly (ProlificDreamer Sec. 5.1 and the L2-VSD paper run the same experiment). theta is
what the prior's encoder would produce (pixels in [-1, 1], or latents): its renders are in the
prior's space already (`Rendered.space == "prior"`) and `prior.decode` shows them. There is no camera: the score model gets the zero camera
(its "any view" condition) and both models the plain prompt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import Recipe
from ..files import to_uint8, write_png
from ..optimize import Problem
from ..rundir.checkpoint import CheckpointKeys
from ..step import Conditioning, Rendered, View


class ImageParticles(Problem):
    """n images, each with its own Adam optimiser; the `Problem` of a 2D run."""

    def __init__(self, recipe: Recipe, prior, prompt: str, generator: torch.Generator):
        self.recipe = recipe
        self.prior = prior
        self.n_particles = recipe.nerf.particles
        self.particle_ids = list(range(self.n_particles))
        self.resolution = prior.image_size // prior.vae_scale_factor
        shape = (prior.unet.config.in_channels, self.resolution, self.resolution)
        std = recipe.scene.image_init_std
        self.images = torch.nn.ParameterList([
            torch.nn.Parameter((std * torch.randn(shape, generator=generator)).to(prior.device))
            for _ in range(self.n_particles)])
        self.optimizers = [torch.optim.Adam([image], lr=recipe.scene.image_lr) for image in self.images]
        self.cond = Conditioning(text_emb=prior.encode_prompts([prompt]),
                                 uncond_emb=prior.encode_prompts([recipe.prior.negative_prompt]),
                                 camera=torch.zeros(1, 16, device=prior.device))

    def sample_view(self, step: int) -> View:
        batch = self.recipe.nerf.batch_size
        cond = Conditioning(text_emb=self.cond.text_emb.expand(batch, -1, -1),
                            uncond_emb=self.cond.uncond_emb.expand(batch, -1, -1),
                            camera=self.cond.camera.expand(batch, -1))
        return View(cameras=None, cond=cond, resolution=self.resolution)

    def render(self, particle: int, view: View, step: int) -> Rendered:
        batch = view.cond.text_emb.shape[0]
        return Rendered(image=self.images[particle].unsqueeze(0).expand(batch, -1, -1, -1), space="prior")

    def regularization(self, rendered: Rendered, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return torch.zeros((), device=rendered.image.device), {}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {CheckpointKeys.particle(i) + "image": image.detach() for i, image in enumerate(self.images)}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for i, image in enumerate(self.images):
                image.copy_(tensors[CheckpointKeys.particle(i) + "image"])

    @torch.no_grad()
    def rgb(self) -> torch.Tensor:
        """The particles as images [n,3,H,W] in [0,1]."""
        return self.prior.decode(torch.stack(list(self.images)))

    @torch.no_grad()
    def preview(self, resolution: int) -> np.ndarray:
        """The particles side by side, each scaled to `resolution` (nearest: the pixels as they are)."""
        rgb = torch.nn.functional.interpolate(self.rgb(), size=(resolution, resolution), mode="nearest")
        return to_uint8(torch.cat(list(rgb.permute(0, 2, 3, 1)), dim=1)[None])[0]

    def write_images(self, stage_path: Path) -> list[str]:
        """The particles as PNGs at the prior's resolution: images/particleK.png."""
        (stage_path / "images").mkdir(exist_ok=True)
        names = [f"images/particle{i}.png" for i in range(self.n_particles)]
        for name, image in zip(names, to_uint8(self.rgb().permute(0, 2, 3, 1))):
            write_png(image, stage_path / name)
        return names
