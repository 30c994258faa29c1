"""`prolific extract`: a DMTet tet grid and a watertight mesh from a NeRF particle's density, or a
splat particle's Gaussians summed into one (`surface.first_stage_surface` computes it), its
checkpoint, PLY and preview.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from ..config import Recipe, to_dict
from ..distributed import World
from ..files import write_png
from ..mesh.export import save_ply
from ..rundir.checkpoint import CheckpointKeys, save_checkpoint
from ..rundir.directory import ArtifactError, RunDir
from ..surface import first_stage_surface
from .common import open_stage
from .mesh_preview import preview_grid

STAGE = "extract"


@dataclass
class ExtractResult:
    run_dir: Path
    mesh_path: Path
    vertices: int
    faces: int
    threshold: float
    seconds: float


def run(run_dir: Path, recipe: Recipe, *, prompt: str | None = None, resume: bool = False, force: bool = False,
        console: Console | None = None, prior=None, world: World = World()) -> ExtractResult:
    """Extract the mesh of the NeRF stage's particle recipe.extract.particle (the stage contract:
    see stages/__init__.py; extract is one step, uses no prior and runs on one process)."""
    console = console or Console(stderr=True)
    if resume:
        raise ArtifactError("extract is one step and has nothing to resume; pass --force to extract again")
    if world.active:
        raise ArtifactError("extract runs on one process; launch it without torchrun")
    run = RunDir.open(run_dir)
    opened = open_stage(run, STAGE, recipe, force=force, again="pass --force to extract again", resumable=False,
                        console=console)
    try:
        return _extract(opened, recipe, console)
    finally:
        opened.release()


def _extract(opened, recipe: Recipe, console: Console) -> ExtractResult:
    from ..rundir.outputs import open_first_stage

    run, stage = opened.run, opened.stage
    first = open_first_stage(run)
    k = recipe.extract.particle
    first.particle(k)  # a missing particle is refused before anything is written

    tic = time.perf_counter()
    nerf_checkpoint = run.stage("nerf").checkpoint_dir
    stage.begin(to_dict(recipe), 1, inputs=[nerf_checkpoint])
    try:
        with console.status(f"extracting particle {k} on a {recipe.extract.resolution}-cell tet grid"):
            surface = first_stage_surface(first, k, recipe.extract, recipe)
        if len(surface.mesh.faces) == 0:
            raise ArtifactError("the extracted mesh is empty after removing small pieces; lower --threshold")
        tensors = {CheckpointKeys.DMTET + name: value for name, value in surface.dmtet.tensors().items()}
        save_checkpoint(stage.checkpoint_dir, 0, tensors, {},
                        extra={"stage": STAGE, "particle": k, "threshold": surface.threshold})
        mesh_path = save_ply(surface.mesh, stage.path / "mesh.ply")
        write_png(preview_grid(surface.mesh, recipe), stage.previews_dir / "latest.png")
        info = {"threshold": surface.threshold, "vertices": len(surface.mesh.vertices),
                "faces": len(surface.mesh.faces), "dropped_components": surface.dropped_components,
                "grid_cells": list(surface.dmtet.grid.cells), "cell": surface.dmtet.grid.cell}
        stage.log_metrics(1, info)
    except BaseException as exc:
        stage.finish("failed", 0, error=f"{type(exc).__name__}: {exc}")
        raise
    stage.finish("complete", 1, outputs=["checkpoint/weights.safetensors", "mesh.ply", "previews/latest.png"])
    seconds = time.perf_counter() - tic
    console.print(f"[dim]threshold {surface.threshold:.3g}, {info['faces']} faces, "
                  f"{surface.dropped_components} floating piece(s) dropped, {seconds:.1f} s[/]")
    return ExtractResult(run.path, mesh_path, info["vertices"], info["faces"], surface.threshold, seconds)
