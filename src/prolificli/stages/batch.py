"""`prolific batch`: many prompts, one run directory each, the prior loaded once per worker.

Prompt i goes to worker i % W. W and this worker's index k come from the launcher: torchrun
(RANK / WORLD_SIZE) or a SLURM job array (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN /
SLURM_ARRAY_TASK_COUNT); a plain launch is the one worker. Workers share nothing but the output
folder: each stage's lock keeps any two processes from writing one run, and batch.json is
updated under a file lock.

A stage that is complete is skipped, one that was interrupted is resumed, and a prompt whose
stage fails is recorded and the next prompt goes on; Ctrl-C stops the batch after the stage in
flight has written its checkpoint.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from ..config import ConfigError, Recipe
from ..distributed import World
from ..files import write_json_atomic
from ..mesh.mesh import MeshError
from ..methods import build_recipe
from ..optimize import Interrupted, OptimizationFailed
from ..prior import PriorLoadError
from ..rundir.directory import ArtifactError, RunDir, slugify
from ..rundir.lock import LockError
from ..rundir.outputs import run_recipe
from . import STAGES

BATCH_FILE = "batch.json"


def read_prompts(path: Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ArtifactError(f"cannot read the prompt list {path}: {exc.strerror}") from None
    prompts = [" ".join(line.split()) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ArtifactError(f"{path} holds no prompts (one per line)")
    return prompts


def run_names(prompts: list[str]) -> list[str]:
    """A unique directory name per prompt: its slug, then -2, -3, ... for a repeated one."""
    names, seen = [], {}
    for prompt in prompts:
        slug = slugify(prompt)
        seen[slug] = seen.get(slug, 0) + 1
        names.append(slug if seen[slug] == 1 else f"{slug}-{seen[slug]}")
    return names


def worker_slot() -> tuple[int, int]:
    """(k, W): which worker this process is, of how many."""
    if "SLURM_ARRAY_TASK_COUNT" in os.environ:
        count = int(os.environ["SLURM_ARRAY_TASK_COUNT"])
        index = int(os.environ["SLURM_ARRAY_TASK_ID"]) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
        return index, count
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class BatchSettings:
    prompts_file: Path
    out: Path
    recipe: str | None
    overrides: list[str]
    stages: list[str]


class PriorCache:
    """One loaded prior per prior setting, reused by every stage of every prompt of this worker."""

    def __init__(self, console: Console):
        self.console, self.priors = console, {}

    def get(self, recipe: Recipe):
        from ..prior import load_prior

        key = (recipe.prior.model, recipe.prior.revision, recipe.prior.device, recipe.prior.dtype)
        if key not in self.priors:
            self.console.print(f"[dim]loading prior {recipe.prior.model}[/]")
            # workers that torchrun starts on one node take a GPU each (LOCAL_RANK)
            here = World(0, int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0")))
            self.priors[key] = load_prior(dataclasses.replace(recipe.prior, device=here.device(recipe.prior.device)))
        prior = self.priors[key]
        prior.shared_unet.detach_score_model()  # the last stage's score model, if it had one
        return prior


def advance_stage(name: str, run_dir: Path, prompt: str, settings: BatchSettings, priors: PriorCache,
                  console: Console) -> str:
    """Run, resume or skip one stage (STAGES[name]) of one prompt; what happened ("complete", "skipped", ...)."""
    stage = STAGES[name]
    done = RunDir.open(run_dir).stage(name) if (run_dir / "run.json").exists() else None
    manifest = done.manifest if done is not None else None
    if manifest is not None and manifest.get("status") == "complete":
        return "skipped"
    resume = manifest is not None and stage.optimizes  # a one-step stage (extract) starts again
    recipe = None
    if not resume:  # the first stage starts from the batch's recipe, the others from the run's own
        base = None if stage.reads is None else run_recipe(run_dir)
        recipe = build_recipe(settings.recipe, settings.overrides, base=base)
    prior = priors.get(recipe if recipe is not None else _stored(run_dir, name)) if stage.uses_prior else None
    stage.run(run_dir, recipe, prompt=prompt if stage.reads is None else None, resume=resume,
              force=manifest is not None and not resume, console=console, prior=prior)
    return "resumed" if resume else "complete"


def _stored(run_dir: Path, stage: str) -> Recipe:
    from ..config import stored_recipe

    return stored_recipe(RunDir.open(run_dir).stage(stage).manifest["config"])


def record(out: Path, entries: dict[str, dict]) -> None:
    """Merge this worker's entries into batch.json ({"runs": {name: entry}}), under a lock that
    the other workers take too."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / (BATCH_FILE + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        path = out / BATCH_FILE
        try:
            current = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            current = {}
        current.setdefault("runs", {}).update(entries)
        write_json_atomic(path, current)


def run_batch(settings: BatchSettings, console: Console) -> dict[str, dict]:
    """This worker's share of the prompts, each through settings.stages; its batch.json entries,
    by run directory name (a prompt listed twice gets two runs)."""
    prompts = read_prompts(settings.prompts_file)
    names = run_names(prompts)
    k, workers = worker_slot()
    mine = [i for i in range(len(prompts)) if i % workers == k]
    priors = PriorCache(console)
    entries: dict[str, dict] = {}
    for n, i in enumerate(mine, start=1):
        prompt, run_dir = prompts[i], settings.out / names[i]
        console.print(f"[bold]worker {k + 1}/{workers}, prompt {n}/{len(mine)}:[/] {prompt} -> {run_dir}")
        entry = {"prompt": prompt, "index": i, "run_dir": str(run_dir.resolve()), "worker": k, "stages": {},
                 "status": "running"}
        tic = time.perf_counter()
        try:
            for name in settings.stages:
                entry["stages"][name] = advance_stage(name, run_dir, prompt, settings, priors, console)
            entry["status"] = "complete"
        except Interrupted:
            entry["status"] = "interrupted"
            raise
        except (ConfigError, ArtifactError, PriorLoadError, LockError, MeshError, OptimizationFailed) as exc:
            entry["status"], entry["error"] = "failed", str(exc)
            console.print(f"[red]failed:[/] {exc}", highlight=False)
        finally:
            entry["seconds"] = round(time.perf_counter() - tic, 2)
            entries[names[i]] = entry
            record(settings.out, {names[i]: entry})
    return entries
