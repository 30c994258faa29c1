"""`prolific nerf`: n NeRF particles distilled from a text-to-image prior by VSD (or SDS, ...).

This file only assembles parts: the particles and their renderer (`NeRFParticles`, the
`Problem` the generic loop optimises), the prior, the distiller, and the run directory. With
scene.representation: gaussians the particles are Gaussian splats (`stages/gaussians.py`); with
image they are images (`stages/image.py`, the 2D mode), written as RUN/nerf/images/particleK.png
at the end. `make_problem` is where the representation is chosen; the mesh stages refuse all but
NeRF runs for now.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from ..config import Recipe
from ..distributed import World
from ..methods import build_distiller
from ..optimize import Problem, Rendered, View
from ..prior import DiffusionPrior
from ..render.background import Background
from ..render.occupancy import OccupancyGrid
from ..render.volume import render, use_deferred
from ..rundir.checkpoint import CheckpointKeys, prefixed
from ..rundir.directory import ArtifactError, RunDir
from ..scene.nerf import NeRFField
from .common import LoopSettings, Prompter, StageResult, open_stage, optimize_stage, start_session
from .first_stage import opacity_regularization, preview_grid, random_background_color, resolution_at
from .gaussians import GaussianParticles, write_splat_files
from .image import ImageParticles

STAGE = "nerf"


class NeRFParticles(Problem):
    """n NeRF particles, each with its own field, background and optimiser (Algorithm 1's theta^(i)).
    `particle_ids`: the ones this process holds (a distributed run spreads them over its ranks)."""

    def __init__(self, recipe: Recipe, prior: DiffusionPrior, prompt: str, generator: torch.Generator,
                 tensor_generator: torch.Generator | None = None, particle_ids: list[int] | None = None):
        cfg = recipe.nerf
        self.recipe = recipe
        self.prior = prior
        self.prompt = prompt
        self.generator = generator  # host decisions: cameras, background choice
        self.tensor_generator = tensor_generator or generator  # ray jitter, colours, grid updates
        self.device = prior.device
        self.particle_ids = list(range(cfg.particles)) if particle_ids is None else list(particle_ids)
        self.n_particles = len(self.particle_ids)
        # every particle is initialised, in order, on every rank: particle i starts the same
        # whichever process holds it (and as in a run of one process); the others are dropped
        fields = [NeRFField(cfg.field) for _ in range(cfg.particles)]
        backgrounds = [Background(cfg.background) for _ in range(cfg.particles)]
        self.fields = torch.nn.ModuleList([fields[i] for i in self.particle_ids]).to(self.device)
        self.backgrounds = torch.nn.ModuleList([backgrounds[i] for i in self.particle_ids]).to(self.device)
        self.optimizers = [
            torch.optim.AdamW(
                field.param_groups(cfg) + [{"params": list(background.parameters()), "lr": cfg.lr_background}],
                betas=cfg.adam_betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
            for field, background in zip(self.fields, self.backgrounds)
        ]
        self.prompter = Prompter(prior, prompt, recipe.camera, recipe.prior.negative_prompt)
        occupancy = cfg.render.occupancy
        self.grids = [OccupancyGrid(occupancy, cfg.field.bound, self.device) if occupancy.enabled else None
                      for _ in self.particle_ids]

    # -- the Problem interface ----------------------------------------------------------------

    def sample_view(self, step: int) -> View:
        return self.prompter.sample_view(self.recipe.nerf.batch_size, resolution_at(self.recipe, step), self.generator)

    def render(self, particle: int, view: View, step: int) -> Rendered:
        cfg = self.recipe.nerf
        batch = len(view.cameras)
        background_color = random_background_color(self.recipe, batch, self.generator, self.tensor_generator,
                                                   self.device)
        field, grid = self.fields[particle], self.grids[particle]
        logs = {}
        if grid is not None:
            if grid.maybe_update(field.density, step, self.tensor_generator):
                logs["occupied_fraction"] = grid.occupied_fraction
            if grid.last_update < 0:
                grid = None  # still warming up: every cell counts, so skip the lookups
        deferred = use_deferred(cfg.render, batch * view.resolution**2)
        out = render(field, self.backgrounds[particle], view.cameras, view.resolution, view.resolution, cfg.render,
                     background_color=background_color, generator=self.tensor_generator, occupancy=grid,
                     deferred=deferred)
        logs["samples_per_ray"] = out.samples_per_ray
        return Rendered(image=out.rgb.permute(0, 3, 1, 2), extras={"opacity": out.opacity, "depth": out.depth},
                        replay=out.replay, logs=logs)

    def regularization(self, rendered: Rendered, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return opacity_regularization(rendered.extras["opacity"], self.recipe, step)

    def describe(self, step: int) -> str:
        return f"res {resolution_at(self.recipe, step)}"

    # -- checkpoint state -----------------------------------------------------------------------

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for i, field, background, grid in zip(self.particle_ids, self.fields, self.backgrounds, self.grids):
            part = CheckpointKeys.particle(i)
            out.update({f"{part}field.{k}": v for k, v in field.state_dict().items()})
            out.update({f"{part}background.{k}": v for k, v in background.state_dict().items()})
            if grid is not None:
                out.update({f"{part}occupancy.{k}": v for k, v in grid.tensors().items()})
        return out

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for i, field, background, grid in zip(self.particle_ids, self.fields, self.backgrounds, self.grids):
            part = CheckpointKeys.particle(i)
            field.load_state_dict(prefixed(tensors, part + "field."))
            background.load_state_dict(prefixed(tensors, part + "background."))
            grid_state = prefixed(tensors, part + "occupancy.")
            if grid is not None and grid_state:  # a checkpoint from before occupancy grids: a fresh grid
                grid.load_tensors(grid_state)

    def preview(self, resolution: int, views: int = 4) -> np.ndarray:
        """A grid image: one row per particle (of this process), `views` azimuths around the evaluation orbit."""
        def rgb(i, cameras):
            return render(self.fields[i], self.backgrounds[i], cameras, resolution, resolution, self.recipe.nerf.render,
                          stratified=False).rgb

        return preview_grid(rgb, self.n_particles, self.recipe, resolution, self.device, views)


def make_problem(recipe: Recipe, prior: DiffusionPrior, prompt: str, generator: torch.Generator,
                 tensor_generator: torch.Generator | None = None,
                 world: World = World()) -> NeRFParticles | GaussianParticles | ImageParticles:
    """The particles of scene.representation that this process holds."""
    if recipe.scene.representation == "image":
        if world.active:
            raise ArtifactError("the 2D mode (scene.representation: image) runs on one process; "
                                "launch it without torchrun")
        return ImageParticles(recipe, prior, prompt, generator)
    if recipe.nerf.particles < world.size:
        raise ArtifactError(f"--particles {recipe.nerf.particles} is fewer than the {world.size} processes: "
                            "every process needs a particle")
    kind = GaussianParticles if recipe.scene.representation == "gaussians" else NeRFParticles
    return kind(recipe, prior, prompt, generator, tensor_generator, world.particles(recipe.nerf.particles))


def run(run_dir: Path, recipe: Recipe | None, *, prompt: str | None = None, resume: bool = False,
        force: bool = False, console: Console | None = None, prior=None, world: World = World()) -> StageResult:
    """Train (or resume, with the recipe it started with) the NeRF stage of `run_dir`, which a new
    run creates for `prompt`, its particles spread over `world`'s processes. Raises Interrupted
    on Ctrl-C after checkpointing. (The stage contract: see stages/__init__.py.)"""
    console = console or Console(stderr=True)
    if not resume and prompt is None:
        raise ArtifactError("a new NeRF stage needs a prompt")
    if world.is_main and not resume:
        RunDir.create(run_dir, prompt, recipe.seed, recipe.name)
    world.barrier()
    run = RunDir.open(run_dir)
    opened = open_stage(run, STAGE, recipe, resume=resume, force=force, again="choose another --out",
                        lock=world.is_main, console=console)
    with opened:
        world.barrier()  # every rank has read the stage before rank 0 starts writing it
        recipe, prompt = opened.recipe, run.info["prompt"]
        session = start_session(recipe, console, world, prior, resumed=opened.resumed)
        particles = make_problem(recipe, session.prior, prompt, session.generator, session.tensor_generator, world)
        finalize = None  # what the stage writes besides its checkpoint, once complete
        if isinstance(particles, ImageParticles):
            finalize = lambda: particles.write_images(opened.stage.path)  # noqa: E731
        elif isinstance(particles, GaussianParticles):
            finalize = lambda: write_splat_files(opened.stage, recipe)  # noqa: E731
        distiller = build_distiller(recipe.guidance, recipe, session.prior, world=world)
        return optimize_stage(opened, session, particles, distiller, settings=LoopSettings.of(recipe.nerf), inputs=[],
                              title=f"{recipe.scene.representation} {recipe.guidance.method}", console=console,
                              finalize=finalize, extra={"prompt": prompt})
