"""What every optimisation stage does around the loop: resume, checkpoints, previews, manifest.

A stage builds its `Problem` (which also knows its own tensors and optimisers) and its
distiller, then calls `optimise`. Checkpoint layout, shared by the stages:
    tensors:          the problem's tensors, "distiller.*" (VSD's score model), "rng.generator"
    optimizer states: "particle{i}" per optimiser of the problem, "distiller"
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch
from rich.console import Console

from ..artifacts import (ArtifactError, Checkpoint, StageDir, find_checkpoint, load_checkpoint, prefixed,
                         save_checkpoint)
from ..cameras import Cameras, view_prompts
from ..distill import Conditioning
from ..files import png_bytes, write_bytes_atomic
from ..optimize import Interrupted, LoopHooks, Problem, View, optimization_step, run_loop


class Prompter:
    """Turns sampled cameras into a `View`: the prior sees the prompt with its view suffix (y^c),
    the score model the plain prompt y and the camera (Eq. 9)."""

    def __init__(self, prior, prompt: str, camera_cfg, negative_prompt: str):
        self.prior, self.prompt, self.camera_cfg = prior, prompt, camera_cfg
        self.uncond_emb = prior.encode_prompts([negative_prompt])
        self.plain_emb = prior.encode_prompts([prompt])

    def view(self, cameras: Cameras, resolution: int) -> View:
        batch = len(cameras)
        prompts = view_prompts(self.prompt, cameras, self.camera_cfg)
        cond = Conditioning(text_emb=self.prior.encode_prompts(prompts),
                            uncond_emb=self.uncond_emb.expand(batch, -1, -1),
                            camera=cameras.embedding().to(self.prior.device),
                            score_text_emb=self.plain_emb.expand(batch, -1, -1))
        return View(cameras=cameras.to(self.prior.device), cond=cond, resolution=resolution)


class StageProblem(Problem, Protocol):
    optimizers: list[torch.optim.Optimizer]

    def tensors(self) -> dict[str, torch.Tensor]: ...

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None: ...

    def preview(self, resolution: int) -> np.ndarray: ...


@dataclass
class LoopSettings:
    steps: int
    checkpoint_every: int
    preview_every: int
    preview_resolution: int
    log_every: int


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


def refuse_existing(stage: StageDir, command: str, run_path) -> None:
    if stage.manifest is None:
        return
    status = stage.manifest.get("status")
    hint = "pass --force to start it again" if status == "complete" else \
        f"continue it with `prolific {command} --resume {run_path}` or pass --force to start again"
    raise ArtifactError(f"{stage.path} already exists (status: {status}); {hint}")


def clear_stage(stage: StageDir) -> None:
    """--force: remove a previous attempt's files so nothing stale survives into the new one."""
    stage.close()
    if stage.path.exists():
        shutil.rmtree(stage.path)


def optimise(stage: StageDir, problem: StageProblem, distiller, encode: Callable[[torch.Tensor], torch.Tensor],
             generator: torch.Generator, settings: LoopSettings, *, config: Any, inputs: list,
             checkpoint: Checkpoint | None, console: Console, title: str, outputs: list[str],
             finalize: Callable[[], list[str]] | None = None, extra: dict | None = None,
             tensor_generator: torch.Generator | None = None) -> int:
    """Restore from `checkpoint` (if any), run the loop to settings.steps, write the final
    checkpoint (and whatever `finalize` writes), mark the stage complete. Raises Interrupted
    after checkpointing on Ctrl-C; a failure marks the stage failed and re-raises.
    `tensor_generator` (see optimize.device_generator) is checkpointed too when it is not `generator`."""
    separate = tensor_generator is not None and tensor_generator is not generator
    start = 0
    if checkpoint is not None:
        problem.load_tensors(checkpoint.tensors)
        for i, optimizer in enumerate(problem.optimizers):
            optimizer.load_state_dict(checkpoint.optimizer_states[f"particle{i}"])
        if "distiller" in checkpoint.optimizer_states:  # SDS has no state of its own
            distiller.load_state_dict({"score_model": prefixed(checkpoint.tensors, "distiller."),
                                       "optimizer": checkpoint.optimizer_states["distiller"]})
        generator.set_state(checkpoint.tensors["rng.generator"])
        if separate and "rng.tensor_generator" in checkpoint.tensors:  # else: a CPU run resumed on a GPU
            tensor_generator.set_state(checkpoint.tensors["rng.tensor_generator"])
        start = checkpoint.step
        console.print(f"[dim]resuming {stage.path} from step {start}[/]")
    stage.begin(config, settings.steps, inputs=inputs, step=start)
    last_checkpoint = [start]  # what a failed run can be resumed from

    def write_checkpoint(step: int) -> None:
        tensors = problem.tensors()
        distiller_state = distiller.state_dict()
        tensors.update({f"distiller.{k}": v for k, v in distiller_state.get("score_model", {}).items()})
        tensors["rng.generator"] = generator.get_state()
        if separate:
            tensors["rng.tensor_generator"] = tensor_generator.get_state()
        optimizer_states = {f"particle{i}": opt.state_dict() for i, opt in enumerate(problem.optimizers)}
        if "optimizer" in distiller_state:
            optimizer_states["distiller"] = distiller_state["optimizer"]
        save_checkpoint(stage.checkpoint_dir, step, tensors, optimizer_states, extra={"stage": stage.name, **(extra or {})})
        last_checkpoint[0] = step
        stage.progress(step, force=True)

    def write_preview(step: int) -> None:
        png = png_bytes(problem.preview(settings.preview_resolution))
        write_bytes_atomic(stage.previews_dir / f"step-{step:06d}.png", png)
        write_bytes_atomic(stage.previews_dir / "latest.png", png)

    schedule = getattr(distiller, "schedule", None)

    def describe(step: int) -> str:
        lo, hi = schedule.t_range(step) if schedule is not None else (0, 0)
        resolution = problem.resolution_at(step) if hasattr(problem, "resolution_at") else None
        return (f"res {resolution} " if resolution else "") + f"t [{lo},{hi}]"

    hooks = LoopHooks(checkpoint=write_checkpoint, preview=write_preview,
                      log_metrics=stage.log_metrics, progress=stage.progress, describe=describe)
    step_fn = lambda step: optimization_step(problem, encode, distiller, step, generator,  # noqa: E731
                                             tensor_generator=tensor_generator)
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
    stage.finish("complete", done, outputs=["checkpoint/weights.safetensors", "previews/latest.png", *outputs, *written])
    return done
