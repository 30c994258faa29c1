"""The skeleton every optimisation stage (nerf, geometry, texture) runs, in four calls:

    opened  = open_stage(run, "texture", recipe, resume=..., force=...)   create, resume or start again
    session = start_session(opened.recipe, console)                       seeds, generators, the prior
    problem, distiller = ...                                              the stage's own part
    result  = optimize_stage(opened, session, problem, distiller, ...)    restore, loop, checkpoint, finish

A stage's `optimize.Problem` knows its tensors and optimisers; the distiller its own state
(`DistillerState`); the checkpoint keys are `rundir.checkpoint.CheckpointKeys`.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..cameras import Cameras, sample_cameras, view_prompts
from ..config import Recipe, stored_recipe, to_dict
from ..distill import Conditioning, DistillerState
from ..distributed import World, rank_seed
from ..files import png_bytes, write_bytes_atomic
from ..optimize import (Distiller, Interrupted, OptimizationFailed, Problem, View, deferred_sigint,
                        device_generator, optimization_step)
from ..prior import DiffusionPrior
from ..rundir.checkpoint import (Checkpoint, CheckpointKeys, CheckpointWriteError, find_checkpoint, load_checkpoint,
                                 prefixed, save_checkpoint)
from ..rundir.directory import ArtifactError, RunDir, StageDir
from ..rundir.lock import LOCK_FILE, StageLock, describe_takeover
from ..rundir.tensorboard_log import TensorBoardLog


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
    lock: StageLock | None = None  # held until the stage ends (rank 0 of a distributed run holds it)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> OpenedStage:
        return self

    def __exit__(self, *exc) -> None:  # the stage ended, however: the lock goes
        self.release()


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
    """--force: remove a previous attempt's files so nothing stale survives into the new one
    (all but the lock this process holds)."""
    stage.close()
    if stage.path.exists():
        for entry in stage.path.iterdir():
            if entry.name == LOCK_FILE:
                continue
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def open_stage(run: RunDir, name: str, recipe: Recipe | None, *, resume: bool = False, force: bool = False,
               again: str = "pass --force to start it again", resumable: bool = True, lock: bool = True,
               console: Console | None = None) -> OpenedStage:
    """Take the stage's lock (`lock`: the process that writes), then resume (with the recipe the
    stage started with), start again (--force: the old attempt removed), or start; an existing
    stage without --resume or --force is an error whose hint is `again` (and --resume, for a
    `resumable` stage that did not complete)."""
    stage = run.stage(name)
    held = StageLock(stage.path).acquire() if lock else None
    if held is not None and held.took_over is not None and console is not None:
        console.print(f"[yellow]{stage.path}: {describe_takeover(held.took_over)}[/]")
    try:
        if resume:
            manifest, checkpoint = resume_checkpoint(stage, name)
            return OpenedStage(run, stage, stored_recipe(manifest["config"]), checkpoint, manifest, held)
        if force:
            clear_stage(stage)
        elif stage.manifest is not None:
            status = stage.manifest.get("status")
            hint = again if status == "complete" or not resumable else \
                f"continue it with `prolific {name} --resume {run.path}` or {again}"
            raise ArtifactError(f"{stage.path} already exists (status: {status}); {hint}")
        return OpenedStage(run, stage, recipe, None, None, held)
    except BaseException:
        if held is not None:
            held.release()
        raise


@dataclass
class Session:
    """The processes, the seeded randomness and the prior of one stage run."""

    prior: DiffusionPrior
    generator: torch.Generator  # every host decision of the loop (cameras, particle, background)
    tensor_generator: torch.Generator  # the step's tensors (see optimize.device_generator)
    world: World = World()  # the processes this run is spread over (a world of one by default)


def start_session(recipe: Recipe, console: Console, world: World = World(), prior=None,
                  resumed: dict | None = None) -> Session:
    """Seeds, generators and the prior (`prior`: one already loaded for recipe.prior, which a
    batch reuses). Parameters start from the run's seed on every rank (so every rank builds the
    same particles and score model); each rank draws from its own generator. A resumed stage
    (`resumed`: its manifest) loads the hub commit it started with, even if the branch moved."""
    from ..prior import load_prior

    torch.manual_seed(recipe.seed)  # parameter initialisation
    generator = torch.Generator().manual_seed(rank_seed(recipe.seed, world.rank))
    if prior is None:
        prior_cfg = dataclasses.replace(recipe.prior, device=world.device(recipe.prior.device))
        started_at = ((resumed or {}).get("details") or {}).get("prior", {}).get("commit")
        if started_at:
            prior_cfg = dataclasses.replace(prior_cfg, revision=started_at)
        if world.is_main:
            at = f" at {started_at}" if started_at else ""
            console.print(f"[dim]loading prior {recipe.prior.model}{at}[/]")
        prior = load_prior(prior_cfg)
    return Session(prior, generator, device_generator(generator, prior.device), world)


@dataclass
class StageResult:
    run_dir: Path
    stage: str
    status: str
    step: int
    steps: int
    seconds: float
    outputs: list[str]  # relative to the stage directory


def restore(checkpoint: Checkpoint, problem: Problem, distiller: Distiller, session: Session) -> dict:
    """Load this rank's particles, their optimisers, the distiller and this rank's generators from
    a checkpoint that any number of processes wrote; what the manifest should say of a change."""
    world = session.world
    problem.load_tensors(checkpoint.tensors)
    for pid, optimizer in zip(problem.particle_ids, problem.optimizers):
        optimizer.load_state_dict(checkpoint.optimizer_states[CheckpointKeys.particle_optimizer(pid)])
    distiller.load_state_dict(DistillerState(prefixed(checkpoint.tensors, CheckpointKeys.DISTILLER),
                                             checkpoint.optimizer_states.get(CheckpointKeys.DISTILLER_OPTIMIZER)))
    written_by = int(checkpoint.extra.get("processes", 1))
    if CheckpointKeys.generator(world.rank) in checkpoint.tensors:
        session.generator.set_state(checkpoint.tensors[CheckpointKeys.generator(world.rank)])
        key = CheckpointKeys.tensor_generator(world.rank)
        if session.tensor_generator is not session.generator and key in checkpoint.tensors:
            session.tensor_generator.set_state(checkpoint.tensors[key])  # else: a CPU run resumed on a GPU
    if written_by == world.size:
        return {}
    # particles are re-assigned by index (i on rank i % size); generators of ranks that no longer
    # exist are dropped, and new ranks start from their own seed
    return {"resumed_from_processes": written_by,
            "rng_dropped_ranks": list(range(world.size, written_by)),
            "rng_fresh_ranks": list(range(written_by, world.size))}


def checkpoint_part(problem: Problem, session: Session) -> tuple[dict, dict]:
    """This rank's share of a checkpoint: its particles' tensors and optimiser states, its generators."""
    rank = session.world.rank
    tensors = {k: v.detach().cpu() for k, v in problem.tensors().items()}
    tensors[CheckpointKeys.generator(rank)] = session.generator.get_state()
    if session.tensor_generator is not session.generator:
        tensors[CheckpointKeys.tensor_generator(rank)] = session.tensor_generator.get_state().cpu()
    optimizers = {CheckpointKeys.particle_optimizer(pid): opt.state_dict()
                  for pid, opt in zip(problem.particle_ids, problem.optimizers)}
    return tensors, optimizers


def write_checkpoint(stage: StageDir, session: Session, problem: Problem, distiller: Distiller, step: int,
                     extra: dict | None) -> int:
    """Every rank's share gathered, rank 0 writes it; every rank returns `step` once it is on disk."""
    world = session.world
    state = distiller.state_dict()
    world.check_identical(state.tensors, "score model replicas")
    parts = world.gather(checkpoint_part(problem, session))
    if world.is_main:
        tensors, optimizer_states = {}, {}
        for part_tensors, part_optimizers in parts:
            tensors.update(part_tensors)
            optimizer_states.update(part_optimizers)
        tensors.update({CheckpointKeys.DISTILLER + k: v for k, v in state.tensors.items()})
        if state.optimizer is not None:
            optimizer_states[CheckpointKeys.DISTILLER_OPTIMIZER] = state.optimizer
        save_checkpoint(stage.checkpoint_dir, step, tensors, optimizer_states,
                        extra={"stage": stage.name, "processes": world.size, **(extra or {})})
        stage.progress(step, force=True)
    world.barrier()  # nobody goes on (or stops) before the checkpoint is on disk
    return step


def write_preview(stage: StageDir, problem: Problem, resolution: int, step: int,
                  tensorboard: TensorBoardLog | None) -> None:
    image = problem.preview(resolution)
    png = png_bytes(image)
    write_bytes_atomic(stage.previews_dir / f"step-{step:06d}.png", png)
    write_bytes_atomic(stage.previews_dir / "latest.png", png)
    if tensorboard is not None:
        tensorboard.image(step, image)


def progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TextColumn("{task.fields[rate]}"),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False)


def optimize_stage(opened: OpenedStage, session: Session, problem: Problem, distiller: Distiller, *,
                   settings: LoopSettings, inputs: list, title: str, console: Console,
                   finalize: Callable[[], list[str]] | None = None, extra: dict | None = None) -> StageResult:
    """The stage's loop, top to bottom: restore from the opened stage's checkpoint (if any), run
    `optimization_step` to settings.steps with its logs, previews and checkpoints, write the final
    checkpoint (and whatever `finalize` writes), mark the stage complete.

    Ctrl-C or SIGTERM finishes the step in flight, writes a checkpoint and raises Interrupted (a
    second Ctrl-C aborts without one: the last periodic checkpoint stands). A failure marks the
    stage failed and re-raises; a crash keeps the last periodic checkpoint, since the state in the
    middle of a step is not one to resume from.

    Spread over several processes (session.world), every rank runs the loop on its own particles
    and draws from its own generators; rank 0 (`main`) alone writes the stage's files and shows the
    progress bar, a checkpoint is gathered from every rank, and all ranks agree on stopping."""
    stage, world, steps = opened.stage, session.world, settings.steps
    main = world.is_main
    console = console if main else Console(quiet=True)
    step, details = 0, {}
    if opened.checkpoint is not None:
        details = restore(opened.checkpoint, problem, distiller, session)
        step = opened.checkpoint.step
        console.print(f"[dim]resuming {stage.path} from step {step}[/]")
    if world.active:
        details = {"processes": world.size, **details}
    trained = sum(t.numel() for t in distiller.state_dict().tensors.values())  # VSD's LoRA + camera MLP; SDS: 0
    # which weights made this run: the model and revision asked for, the commit they resolved to
    details = {"distiller_parameters": trained, "prior": dataclasses.asdict(session.prior.source), **details}
    tensorboard = TensorBoardLog(stage.path, step) if main and opened.recipe.log.tensorboard else None
    if main:
        stage.begin(to_dict(opened.recipe), steps, inputs=inputs, step=step, details=details)
    saved = step  # the step of the last checkpoint on disk: what a failed run is resumed from
    rate_window: list[float] = []
    loss = float("nan")  # the loss last read (see below), for the progress bar
    try:
        def announce() -> None:
            console.print("stopping (Ctrl-C or SIGTERM): finishing this step, then writing a checkpoint "
                          "(Ctrl-C again to abort)")

        with deferred_sigint(announce) as stop_requested, progress_bar(console) as progress:
            task = progress.add_task(title, total=steps, completed=step, status="", rate="")
            while step < steps:
                tic = time.perf_counter()
                logs = optimization_step(problem, session.prior.encode_images, distiller, step, session.generator,
                                         tensor_generator=session.tensor_generator)
                step += 1
                seconds = time.perf_counter() - tic
                logs["step_seconds"] = seconds  # the optimisation step alone, without checkpoints or previews
                rate_window = (rate_window + [seconds])[-20:]
                logging = step % settings.log_every == 0 or step == steps
                checkpointing = step % settings.checkpoint_every == 0 and step < steps
                stopping = world.agree(stop_requested()) and step < steps  # every rank stops after one step
                # Reading a logged tensor waits for the GPU, so the logs are read only when they are
                # written, and before a checkpoint: a non-finite loss is caught there at the latest
                # (a NaN spreads to the parameters, so the step being saved shows it too).
                if logging or checkpointing or stopping:
                    logs = {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in logs.items()}
                    if not math.isfinite(logs.get("loss", 0.0)):
                        raise OptimizationFailed(f"the loss became {logs['loss']} at step {step}")
                    loss = logs.get("loss", float("nan"))
                    if logging and main:
                        stage.log_metrics(step, logs)
                        if tensorboard is not None:
                            tensorboard.scalars(step, logs)
                if checkpointing:
                    saved = write_checkpoint(stage, session, problem, distiller, step, extra)
                if main and (step % settings.preview_every == 0 or step == steps):
                    write_preview(stage, problem, settings.preview_resolution, step, tensorboard)
                if main:
                    stage.progress(step)
                lo, hi = distiller.schedule.t_range(step)
                its = len(rate_window) / max(sum(rate_window), 1e-9)
                progress.update(task, completed=step,
                                status=" ".join(part for part in (f"loss {loss:.4g}", problem.describe(step),
                                                                  f"t [{lo},{hi}]") if part),
                                rate=f"{its:.2f} it/s" if its >= 1 else f"{1 / its:.1f} s/it")
                if stopping:
                    saved = write_checkpoint(stage, session, problem, distiller, step, extra)
                    raise Interrupted(step)
        saved = write_checkpoint(stage, session, problem, distiller, step, extra)
        outputs = ["checkpoint/weights.safetensors", "previews/latest.png",
                   *(finalize() if finalize is not None and main else [])]
        if main:
            stage.finish("complete", step, outputs=outputs)
    except Interrupted as exc:
        if main:
            stage.finish("interrupted", exc.step)
        raise
    except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint of this step, the last one stands
        if main:
            stage.finish("interrupted", saved)
        raise
    except BaseException as exc:
        if main:
            try:
                stage.finish("failed", saved, error=f"{type(exc).__name__}: {exc}")
            except OSError:  # a full disk may refuse the manifest too; the last checkpoint stands
                pass
        if isinstance(exc, CheckpointWriteError):
            kept = f"the checkpoint of step {saved} is kept" if saved else "there is no earlier checkpoint"
            raise CheckpointWriteError(f"{exc}; {kept}") from None
        raise
    finally:
        if tensorboard is not None:
            tensorboard.close()
    world.barrier()
    return StageResult(opened.run.path, stage.name, "complete", step, steps,
                       float(stage.manifest["timings"]["seconds"]), outputs)
