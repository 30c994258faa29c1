"""The one optimisation step every distillation stage repeats.

A stage supplies a `Problem` (what theta is and how to render it) and a distiller (SDS, VSD, ...);
`optimization_step` is the same for the NeRF, geometry and texture stages:

    view  = problem.sample_view(step)                 camera c ~ p(c), prompts with view suffix
    image = problem.render(particle, view)            x = g(theta, c), differentiable (or deferred)
    x0    = encode(image.image)                       to the prior's space (latents or pixels), if not in it
    out   = distiller(x0, view.cond, step)            w(t)(eps_prior - eps_score) -> surrogate loss
    loss  = out.loss + problem.regularization(...)    backprop into theta, one optimiser step
    (deferred render: backprop stops at the image; image.replay() re-renders in chunks to go on)

The loop around it (restore, logs, previews, checkpoints, Ctrl-C, finish) is
`stages/common.optimize_stage`, on one screen; `deferred_sigint` here turns Ctrl-C into a flag
it reads between steps.
"""

from __future__ import annotations

import contextlib
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Callable, Protocol

import numpy as np
import torch

from .distill import DistillerState, DistillOutput
from .step import Conditioning, Rendered, View


class Problem(ABC):
    """What a stage optimises: n particles on this process, each with its own parameters and
    optimiser (what `optimization_step` uses), and what the stage keeps of them: their tensors
    for the checkpoint and a preview."""

    n_particles: int  # on this process
    particle_ids: list[int]  # their run-wide indices (checkpoint keys), in order
    optimizers: list[torch.optim.Optimizer]  # one per particle of this process

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

    def after_step(self, step: int) -> dict[str, float]:
        """Work between steps, after the optimiser's (`step`: the steps done, this one included);
        returns what to log. Gaussian splats densify here."""
        return {}

    def describe(self, step: int) -> str:
        """Extra text for the progress bar at `step` (the NeRF stage: its render size)."""
        return ""


class Schedule(Protocol):
    def t_range(self, step: int) -> tuple[int, int]: ...


class Distiller(Protocol):
    """SDS, VSD, L-VSD, L2-VSD, ESD (distill/): the gradient of one step, and what a checkpoint
    keeps of the distiller (VSD: its score model and that model's optimiser)."""

    schedule: Schedule  # the timestep range at each step (distill/schedule.py)

    def __call__(self, x0: torch.Tensor, cond: Conditioning, step: int, *, generator=None) -> DistillOutput: ...

    def state_dict(self) -> DistillerState: ...

    def load_state_dict(self, state: DistillerState) -> None: ...


def device_generator(host: torch.Generator, device: torch.device | str) -> torch.Generator:
    """The generator a step's tensors (noise, timesteps, ray jitter) are drawn from.

    On a GPU: a generator on that device, seeded by one draw of the host generator, so that no
    draw is copied host-to-device (a copy from pageable memory waits for the stream). On the CPU:
    the host generator itself, so a CPU run draws exactly the numbers it always drew. Decisions
    the host needs (which particle, the cameras and their view prompts) stay on `host`.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return host
    seed = int(torch.randint(2**62, (1,), generator=host))
    return torch.Generator(device=device).manual_seed(seed)


def optimization_step(problem: Problem, encode: Callable[[torch.Tensor], torch.Tensor], distiller: Distiller,
                      step: int, generator: torch.Generator, *, tensor_generator: torch.Generator | None = None,
                      timer: Callable[[str], contextlib.AbstractContextManager] | None = None) -> dict[str, float]:
    """One 3D update (and, inside a VSD distiller, one score-model update); returns what to log
    (floats, and 0-dim tensors that `stages/common.optimize_stage` reads only at logging steps).
    `generator` makes the host's decisions; the distiller draws from `tensor_generator` (default:
    the same generator; see `device_generator`). `timer(part)`, when given, wraps each part
    (render, distill, backward, replay, step): benchmarks."""
    part = timer or (lambda name: contextlib.nullcontext())
    with part("render"):
        # Algorithm 1, line 3: a random particle; it is the only one whose parameters move this step.
        particle = int(torch.randint(problem.n_particles, (1,), generator=generator))
        view = problem.sample_view(step)
        rendered = problem.render(particle, view, step)
    with part("distill"):
        x0 = encode(rendered.image) if rendered.space == "rgb" else rendered.image
        out = distiller(x0, view.cond, step, generator=tensor_generator or generator)
        reg_loss, reg_logs = problem.regularization(rendered, step)
        loss = out.loss + reg_loss
    optimizer = problem.optimizer(particle)
    with part("backward"):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # a deferred render's graph ends at the image: this reaches only rgb and extras
    if rendered.replay is not None:
        with part("replay"):
            rendered.replay()  # ... and this carries their gradients into theta, chunk by chunk
    with part("step"):
        optimizer.step()
        after = problem.after_step(step + 1)
    return {"loss": loss.detach(), "particle": particle, "resolution": view.resolution,
            **out.logs, **reg_logs, **rendered.logs, **after}


class OptimizationFailed(Exception):
    """The optimisation itself broke (a non-finite loss, a surface that vanished): not bad input.
    The stage is marked failed; its last checkpoint stays on disk."""


class Interrupted(Exception):
    """Ctrl-C during the loop; the checkpoint for `step` has been written."""

    def __init__(self, step: int):
        super().__init__(f"interrupted at step {step}")
        self.step = step


DUPLICATE_SIGNAL_S = 1.0  # a second signal sooner than this after the first is the same one


@contextlib.contextmanager
def deferred_sigint(on_request: Callable[[], None] = lambda: None) -> Iterator[Callable[[], bool]]:
    """Turn the first Ctrl-C (SIGINT) or SIGTERM into a flag checked between steps; a second one
    aborts at once. SIGTERM counts because it is how torchrun stops its workers and how SLURM
    warns of a time limit: both leave time to finish the step and write a checkpoint.

    A step is not atomic (VSD updates its score model before the 3D optimiser step), so stopping
    in the middle of one would checkpoint a state no uninterrupted run ever had.
    """
    requested, first = [False], [0.0]

    def handler(signum, frame):
        if requested[0]:
            # under torchrun one Ctrl-C arrives twice, from the terminal and forwarded by the agent
            if time.monotonic() - first[0] < DUPLICATE_SIGNAL_S:
                return
            raise KeyboardInterrupt
        requested[0], first[0] = True, time.monotonic()
        on_request()

    try:
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals cannot be caught here
        yield lambda: False
        return
    try:
        yield lambda: requested[0]
    finally:
        for sig, handler_before in previous.items():
            signal.signal(sig, handler_before)
