"""The skeleton every optimisation stage (nerf, geometry, texture) runs, in four calls:

    opened  = open_stage(run, "texture", recipe, resume=..., force=...)   create, resume or start again
    session = start_session(opened.recipe, console)                       seeds, generators, the prior
    problem, distiller = ...                                              the stage's own part
    result  = optimize_stage(opened, session, problem, distiller, ...)    restore, loop, checkpoint, finish

A stage's `StageProblem` knows its tensors and optimisers; the distiller its own state
(`DistillerState`); the checkpoint keys are `artifacts.Keys`.
"""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.console import Console

from ..artifacts import (ArtifactError, Checkpoint, Keys, RunDir, StageDir, find_checkpoint, load_checkpoint,
                         prefixed, save_checkpoint)
from ..cameras import Cameras, sample_cameras, view_prompts
from ..config import Recipe, stored_recipe, to_dict
from ..distill import Conditioning, DistillerState
from ..files import png_bytes, write_bytes_atomic
from ..optimize import Interrupted, LoopHooks, Rendered, View, device_generator, optimization_step, run_loop


class Prompter:
    """Turns sampled cameras into a `View`: the prior sees the prompt with its view suffix (y^c),
    the score model the plain prompt y and the camera (Eq. 9)."""

    def __init__(self, prior, prompt: str, camera_cfg, negative_prompt: str):
        self.prior, self.prompt, self.camera_cfg = prior, prompt, camera_cfg
        self.uncond_emb = prior.encode_prompts([negative_prompt])
        self.plain_emb = prior.encode_prompts([prompt])

    def sample_view(self, batch: int, resolution: int, generator: torch.Generator) -> View:
        """A batch of training cameras drawn from p(c) (the recipe's camera section) as a View."""
        return self.view(sample_cameras(self.camera_cfg, batch, generator=generator), resolution)

    def view(self, cameras: Cameras, resolution: int) -> View:
        batch = len(cameras)
        prompts = view_prompts(self.prompt, cameras, self.camera_cfg)
        cond = Conditioning(text_emb=self.prior.encode_prompts(prompts),
                            uncond_emb=self.uncond_emb.expand(batch, -1, -1),
                            camera=cameras.embedding().to(self.prior.device),
                            score_text_emb=self.plain_emb.expand(batch, -1, -1))
        return View(cameras=cameras.to(self.prior.device), cond=cond, resolution=resolution)


class StageProblem(ABC):
    """What a stage optimises (optimize.Problem), plus what the stage keeps of it: its tensors,
    its optimisers (one per particle) and a preview."""

    n_particles: int
    optimizers: list[torch.optim.Optimizer]

    @abstractmethod
    def sample_view(self, step: int) -> View: ...

    @abstractmethod
    def render(self, particle: int, view: View, step: int) -> Rendered: ...

    @abstractmethod
    def regularization(self, rendered: Rendered, step: int) -> tuple[torch.Tensor, dict[str, float]]: ...

    def optimizer(self, particle: int) -> torch.optim.Optimizer:
        return self.optimizers[particle]

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None: ...

    @abstractmethod
    def preview(self, resolution: int) -> np.ndarray: ...

    def describe(self, step: int) -> str:
        """Extra text for the progress bar at `step` (the NeRF stage: its render size)."""
        return ""


@dataclass
class LoopSettings:
    steps: int
    checkpoint_every: int
    preview_every: int
    preview_resolution: int
    log_every: int

    @classmethod
    def of(cls, stage_cfg) -> LoopSettings:
        """From a stage's config section (nerf, geometry, texture all carry these five)."""
        return cls(stage_cfg.steps, stage_cfg.checkpoint_every, stage_cfg.preview_every,
                   stage_cfg.preview_resolution, stage_cfg.log_every)


@dataclass
class OpenedStage:
    """A stage ready to run: where it writes, the recipe it runs, what it resumes from."""

    run: RunDir
    stage: StageDir
    recipe: Recipe
    checkpoint: Checkpoint | None  # None: a fresh start (or a resume that died before its first)
    resumed: dict | None  # the manifest of the attempt being resumed


def resume_checkpoint(stage: StageDir, command: str) -> tuple[dict, Checkpoint | None]:
    """The manifest and last checkpoint of an interrupted stage (None if it died before its first)."""
    manifest = stage.manifest
    if manifest is None:
        raise ArtifactError(f"{stage.path} has no manifest to resume; start it with `prolific {command}`")
    if manifest.get("status") == "complete":
        raise ArtifactError(f"{stage.path} is already complete ({manifest['step']} steps)")
    # a damaged checkpoint is an error, not a reason to start over silently
    has_checkpoint = stage.checkpoint_dir.exists() or find_checkpoint(stage.checkpoint_dir) is not None
    return manifest, load_checkpoint(stage.checkpoint_dir) if has_checkpoint else None


def clear_stage(stage: StageDir) -> None:
    """--force: remove a previous attempt's files so nothing stale survives into the new one."""
    stage.close()
    if stage.path.exists():
        shutil.rmtree(stage.path)


def open_stage(run: RunDir, name: str, recipe: Recipe | None, *, resume: bool = False, force: bool = False,
               again: str = "pass --force to start it again", resumable: bool = True) -> OpenedStage:
    """Resume (with the recipe the stage started with), start again (--force: the old attempt
    removed), or start; an existing stage without --resume or --force is an error whose hint
    is `again` (and --resume, for a `resumable` stage that did not complete)."""
    stage = run.stage(name)
    if resume:
        manifest, checkpoint = resume_checkpoint(stage, name)
        return OpenedStage(run, stage, stored_recipe(manifest["config"]), checkpoint, manifest)
    if force:
        clear_stage(stage)
    elif stage.manifest is not None:
        status = stage.manifest.get("status")
        hint = again if status == "complete" or not resumable else \
            f"continue it with `prolific {name} --resume {run.path}` or {again}"
        raise ArtifactError(f"{stage.path} already exists (status: {status}); {hint}")
    return OpenedStage(run, stage, recipe, None, None)


@dataclass
class Session:
    """The seeded randomness and the prior of one stage run."""

    prior: object
    generator: torch.Generator  # every host decision of the loop (cameras, particle, background)
    tensor_generator: torch.Generator  # the step's tensors (see optimize.device_generator)


def start_session(recipe: Recipe, console: Console) -> Session:
    from ..prior import load_prior

    torch.manual_seed(recipe.seed)  # parameter initialisation
    generator = torch.Generator().manual_seed(recipe.seed)
    console.print(f"[dim]loading prior {recipe.prior.model}[/]")
    prior = load_prior(recipe.prior)
    return Session(prior, generator, device_generator(generator, prior.device))


@dataclass
class StageResult:
    run_dir: Path
    stage: str
    status: str
    step: int
    steps: int
    seconds: float
    outputs: list[str]  # relative to the stage directory


def optimize_stage(opened: OpenedStage, session: Session, problem: StageProblem, distiller, *,
                   settings: LoopSettings, inputs: list, title: str, console: Console,
                   finalize: Callable[[], list[str]] | None = None, extra: dict | None = None) -> StageResult:
    """Restore from the opened stage's checkpoint (if any), run the loop to settings.steps, write
    the final checkpoint (and whatever `finalize` writes), mark the stage complete. Raises
    Interrupted after checkpointing on Ctrl-C; a failure marks the stage failed and re-raises."""
    stage, checkpoint = opened.stage, opened.checkpoint
    generator, tensor_generator = session.generator, session.tensor_generator
    separate = tensor_generator is not generator
    start = 0
    if checkpoint is not None:
        problem.load_tensors(checkpoint.tensors)
        for i, optimizer in enumerate(problem.optimizers):
            optimizer.load_state_dict(checkpoint.optimizer_states[Keys.optimizer(i)])
        distiller.load_state_dict(DistillerState(prefixed(checkpoint.tensors, Keys.DISTILLER),
                                                 checkpoint.optimizer_states.get(Keys.DISTILLER_OPTIMIZER)))
        generator.set_state(checkpoint.tensors[Keys.GENERATOR])
        if separate and Keys.TENSOR_GENERATOR in checkpoint.tensors:  # else: a CPU run resumed on a GPU
            tensor_generator.set_state(checkpoint.tensors[Keys.TENSOR_GENERATOR])
        start = checkpoint.step
        console.print(f"[dim]resuming {stage.path} from step {start}[/]")
    stage.begin(to_dict(opened.recipe), settings.steps, inputs=inputs, step=start)
    last_checkpoint = [start]  # what a failed run can be resumed from

    def write_checkpoint(step: int) -> None:
        tensors = problem.tensors()
        state = distiller.state_dict()
        tensors.update({Keys.DISTILLER + k: v for k, v in state.tensors.items()})
        tensors[Keys.GENERATOR] = generator.get_state()
        if separate:
            tensors[Keys.TENSOR_GENERATOR] = tensor_generator.get_state()
        optimizer_states = {Keys.optimizer(i): opt.state_dict() for i, opt in enumerate(problem.optimizers)}
        if state.optimizer is not None:
            optimizer_states[Keys.DISTILLER_OPTIMIZER] = state.optimizer
        save_checkpoint(stage.checkpoint_dir, step, tensors, optimizer_states, extra={"stage": stage.name, **(extra or {})})
        last_checkpoint[0] = step
        stage.progress(step, force=True)

    def write_preview(step: int) -> None:
        png = png_bytes(problem.preview(settings.preview_resolution))
        write_bytes_atomic(stage.previews_dir / f"step-{step:06d}.png", png)
        write_bytes_atomic(stage.previews_dir / "latest.png", png)

    def describe(step: int) -> str:
        lo, hi = distiller.schedule.t_range(step)
        return " ".join(part for part in (problem.describe(step), f"t [{lo},{hi}]") if part)

    hooks = LoopHooks(checkpoint=write_checkpoint, preview=write_preview,
                      log_metrics=stage.log_metrics, progress=stage.progress, describe=describe)
    step_fn = lambda step: optimization_step(problem, session.prior.encode_images, distiller, step,  # noqa: E731
                                             generator, tensor_generator=tensor_generator)
    try:
        done = run_loop(step_fn, start=start, steps=settings.steps, hooks=hooks,
                        checkpoint_every=settings.checkpoint_every, preview_every=settings.preview_every,
                        log_every=settings.log_every, console=console, title=title)
        write_checkpoint(done)
        written = finalize() if finalize is not None else []
    except Interrupted as exc:
        stage.finish("interrupted", exc.step)
        raise
    except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint of this step, the last one stands
        stage.finish("interrupted", last_checkpoint[0])
        raise
    except BaseException as exc:
        stage.finish("failed", last_checkpoint[0], error=f"{type(exc).__name__}: {exc}")
        raise
    outputs = ["checkpoint/weights.safetensors", "previews/latest.png", *written]
    stage.finish("complete", done, outputs=outputs)
    return StageResult(opened.run.path, stage.name, "complete", done, settings.steps,
                       float(stage.manifest["timings"]["seconds"]), outputs)
