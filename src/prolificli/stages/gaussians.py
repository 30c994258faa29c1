"""scene.representation: gaussians — the `nerf` stage's particles as 3D Gaussian splats.

`GaussianParticles` is the `Problem` the loop optimises in place of NeRFParticles: the same views,
backgrounds, regularisers on the rendered opacity and resolution schedule (the nerf section), with
a particle that the tile rasterizer (render/splat.py) draws. After each step it gathers the
screen-space gradient of the particle just rendered; at the recipe's intervals every particle of
this process is densified and pruned (scene/densify.py).
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import Recipe
from ..optimize import OptimizationFailed, Problem, Rendered, View
from ..prior import DiffusionPrior
from ..render.background import Background
from ..render.splat import SplatOutput
from ..rundir.checkpoint import CheckpointKeys, load_checkpoint, prefixed
from ..rundir.directory import StageDir
from ..scene.densify import DensityControl
from ..scene.gaussians import GaussianCloud
from ..scene.splat_ply import write_splat_ply
from .common import Prompter
from .first_stage import opacity_regularization, preview_grid, random_background_color, resolution_at


def means_lr_at(recipe: Recipe, step: int) -> float:
    """The means' learning rate at `step`: log-linear from lr_means (step 0) to lr_means_final
    (the last step), or constant."""
    cfg = recipe.gaussians
    if cfg.lr_means_final is None:
        return cfg.lr_means
    progress = min(step / max(recipe.nerf.steps - 1, 1), 1.0)
    return float(np.exp((1 - progress) * np.log(cfg.lr_means) + progress * np.log(cfg.lr_means_final)))


def initial_clouds(recipe: Recipe, n: int) -> list[GaussianCloud]:
    """Particles 0..n-1 as the recipe starts them (from the global seed, as the NeRF's fields)."""
    cfg = recipe.gaussians
    if cfg.init == "nerf":
        from ..rundir.directory import ArtifactError
        from ..rundir.outputs import open_nerf

        if not cfg.init_from:
            raise ArtifactError("gaussians.init: nerf needs a run to start from: --init-from RUN")
        nerf = open_nerf(cfg.init_from)
        fields = [field for field, _ in nerf.particles]
        return [GaussianCloud.from_nerf(fields[i % len(fields)], cfg) for i in range(n)]
    return [GaussianCloud.initial(cfg, recipe.nerf.field.bound) for _ in range(n)]


def write_splat_files(stage: StageDir, recipe: Recipe) -> list[str]:
    """splats/particleK.ply, the 3D Gaussian splatting PLY (scene/splat_ply.py), for every particle
    of the run: read back from the final checkpoint, which holds every rank's particles."""
    tensors = load_checkpoint(stage.checkpoint_dir).tensors
    (stage.path / "splats").mkdir(exist_ok=True)
    names = [f"splats/particle{i}.ply" for i in range(recipe.nerf.particles)]
    for i, name in enumerate(names):
        cloud = GaussianCloud.from_tensors(prefixed(tensors, CheckpointKeys.particle(i) + "gaussians."))
        write_splat_ply(stage.path / name, cloud, recipe.gaussians.render.smoothing_3d)
    return names


class GaussianParticles(Problem):
    """n Gaussian-splat particles, each with its own background and Adam optimiser."""

    def __init__(self, recipe: Recipe, prior: DiffusionPrior, prompt: str, generator: torch.Generator,
                 tensor_generator: torch.Generator | None = None, particle_ids: list[int] | None = None):
        cfg = recipe.nerf
        self.recipe = recipe
        self.prior = prior
        self.generator = generator
        self.tensor_generator = tensor_generator or generator
        self.device = prior.device
        self.particle_ids = list(range(cfg.particles)) if particle_ids is None else list(particle_ids)
        self.n_particles = len(self.particle_ids)
        # every particle is initialised, in order, on every rank (as NeRFParticles)
        clouds = initial_clouds(recipe, cfg.particles)
        backgrounds = [Background(cfg.background) for _ in range(cfg.particles)]
        self.clouds = [clouds[i].to(self.device) for i in self.particle_ids]
        self.backgrounds = [backgrounds[i].to(self.device) for i in self.particle_ids]
        self.controls = [DensityControl(recipe.gaussians.densify, cloud.count, self.device) for cloud in self.clouds]
        self.optimizers = [self._optimizer(i) for i in range(self.n_particles)]
        self.prompter = Prompter(prior, prompt, recipe.camera, recipe.prior.negative_prompt)
        self._drawn: tuple[int, SplatOutput, int] | None = None  # the render of this step, for its gradients

    def _optimizer(self, i: int) -> torch.optim.Optimizer:
        groups = self.clouds[i].param_groups(self.recipe.gaussians)
        groups.append({"name": "background", "params": list(self.backgrounds[i].parameters()),
                       "lr": self.recipe.nerf.lr_background})
        # eps 1e-15 as 3DGS: the opacity and colour gradients of a splat are tiny
        return torch.optim.Adam(groups, eps=1e-15)

    # -- the Problem interface ----------------------------------------------------------------

    def sample_view(self, step: int) -> View:
        return self.prompter.sample_view(self.recipe.nerf.batch_size, resolution_at(self.recipe, step),
                                         self.generator)

    def render(self, particle: int, view: View, step: int) -> Rendered:
        background_color = random_background_color(self.recipe, len(view.cameras), self.generator,
                                                   self.tensor_generator, self.device)
        cloud = self.clouds[particle]
        # set here, from the step alone, so a resumed run follows the same schedule
        for group in self.optimizers[particle].param_groups:
            if group["name"] == "means":
                group["lr"] = means_lr_at(self.recipe, step)
        out = cloud.render(self.backgrounds[particle], view.cameras.to(self.device), view.resolution,
                           self.recipe.gaussians.render, background_color=background_color)
        out.means2d.retain_grad()
        self._drawn = (particle, out, view.resolution)
        # a soft cap on the scales (gaussians.scale_cap): what a few huge splats would cover
        excess = torch.relu(cloud.scales() - self.recipe.gaussians.scale_cap).mean()
        return Rendered(image=out.rgb.permute(0, 3, 1, 2), extras={"opacity": out.opacity, "depth": out.depth,
                                                                   "scale_excess": excess},
                        logs={"gaussians": float(cloud.count), "pairs_per_pixel": out.pairs / out.rgb[..., 0].numel()})

    def regularization(self, rendered: Rendered, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        loss, logs = opacity_regularization(rendered.extras["opacity"], self.recipe, step)
        scale = rendered.extras["scale_excess"]
        return loss + self.recipe.gaussians.lambda_scale * scale, {**logs, "scale_excess": scale.detach()}

    def after_step(self, step: int) -> dict[str, float]:
        """Gather the rendered particle's screen-space gradients; densify, prune and reset on schedule.
        `step` counts the steps done, this one included."""
        logs: dict[str, float] = {}
        if self._drawn is not None:
            particle, out, resolution = self._drawn
            self._drawn = None
            if out.means2d.grad is not None:
                self.controls[particle].accumulate(out.means2d.grad, out.drawn, resolution)
        for i, (cloud, control) in enumerate(zip(self.clouds, self.controls)):
            if control.due(step):
                done = control.densify_and_prune(cloud, self.optimizers[i], self.tensor_generator)
                if cloud.count == 0:
                    raise OptimizationFailed(f"density control pruned every Gaussian of particle "
                                             f"{self.particle_ids[i]} at step {step}: lower "
                                             "gaussians.densify.min_opacity or raise its max_scale")
                logs.update({f"{k}_{self.particle_ids[i]}" if self.n_particles > 1 else k: float(v)
                             for k, v in done.items()})
            if control.reset_due(step):
                control.reset_opacity(cloud, self.optimizers[i])
        return logs

    def describe(self, step: int) -> str:
        counts = "/".join(f"{cloud.count / 1000:.0f}k" if cloud.count >= 10000 else str(cloud.count)
                          for cloud in self.clouds)
        return f"res {resolution_at(self.recipe, step)} gaussians {counts}"

    # -- checkpoint state -----------------------------------------------------------------------

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for i, cloud, background, control in zip(self.particle_ids, self.clouds, self.backgrounds, self.controls):
            part = CheckpointKeys.particle(i)
            out.update({f"{part}gaussians.{k}": v for k, v in cloud.tensors().items()})
            out.update({f"{part}background.{k}": v for k, v in background.state_dict().items()})
            out.update({f"{part}densify.{k}": v for k, v in control.tensors().items()})
        return out

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """A checkpoint's particles, each with its own number of Gaussians; the optimisers are rebuilt
        around the new tensors (their states are loaded after this, by the loop's restore)."""
        for i, (pid, cloud, background, control) in enumerate(
                zip(self.particle_ids, self.clouds, self.backgrounds, self.controls)):
            part = CheckpointKeys.particle(pid)
            cloud.load_tensors(prefixed(tensors, part + "gaussians."))
            background.load_state_dict(prefixed(tensors, part + "background."))
            control.load_tensors(prefixed(tensors, part + "densify."))
            self.optimizers[i] = self._optimizer(i)

    def preview(self, resolution: int, views: int = 4) -> np.ndarray:
        """A grid image: one row per particle (of this process), `views` azimuths around the evaluation orbit."""
        def rgb(i, cameras):
            return self.clouds[i].render(self.backgrounds[i], cameras, resolution, self.recipe.gaussians.render).rgb

        return preview_grid(rgb, self.n_particles, self.recipe, resolution, self.device, views)
