"""The stage table: every stage of the chain nerf -> extract -> geometry -> texture, one entry each.

As `methods.METHODS` for the distillers: what a stage reads, whether it is an optimisation loop
(resumable, `--steps`, `--tensorboard`), whether its particles spread over the processes of a
torchrun, and its help line. The CLI, `batch` and the evaluation read this table instead of
comparing stage names; a new stage (or a new first-stage representation) is its module and one
entry here.

Every stage's `run` has one signature:

    run(run_dir, recipe, *, prompt=None, resume=False, force=False, console=None, prior=None,
        world=World(), **stage_options) -> a result with .run_dir

`recipe` is None when resuming (the stage's own stored recipe is used); `prompt` starts a new run
(nerf; texture with --mesh); `prior` is one already loaded (a batch reuses it); `world` is the
processes a `spreads` stage is spread over. The entries import their module when called, so
`prolific --help` does not load torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str  # one line for --help and the docs
    reads: str | None  # the stage whose artifact it starts from; None: a prompt
    optimizes: bool  # an optimisation loop: resumable, with --steps and --tensorboard
    uses_prior: bool  # loads the diffusion prior (a batch loads it once per worker)
    spreads: bool  # its particles spread over the processes of a torchrun
    run: Callable[..., object]


def _nerf(*args, **kwargs):
    from .nerf import run

    return run(*args, **kwargs)


def _extract(*args, **kwargs):
    from .extract import run

    return run(*args, **kwargs)


def _geometry(*args, **kwargs):
    from .geometry import run

    return run(*args, **kwargs)


def _texture(*args, **kwargs):
    from .texture import run

    return run(*args, **kwargs)


STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("nerf", "NeRF particles from a text prompt by score distillation (VSD unless --method)",
          reads=None, optimizes=True, uses_prior=True, spreads=True, run=_nerf),
    Stage("extract", "a DMTet tet grid and a watertight mesh from the NeRF's density",
          reads="nerf", optimizes=False, uses_prior=False, spreads=False, run=_extract),
    Stage("geometry", "the extracted mesh refined by SDS on its normal maps",
          reads="extract", optimizes=True, uses_prior=True, spreads=False, run=_geometry),
    Stage("texture", "the mesh painted by VSD on a hash-grid texture, then baked to a UV atlas",
          reads="geometry", optimizes=True, uses_prior=True, spreads=False, run=_texture),
)}
