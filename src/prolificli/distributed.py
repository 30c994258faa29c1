"""The processes of one run, on torch.distributed: who this process is and the few collectives
the stages need. Launched by torchrun (one node or many, or under SLURM through srun), a run has
WORLD_SIZE processes, NCCL between GPUs and gloo between CPUs; launched plainly it is a world of
one, and every collective below is then a no-op, so no stage branches on it.

`join()` gives this process's `World`; the stages take it as an argument (a world of one by
default), so nothing joins a process group behind a caller's back. What the collectives are for:
    average_gradients    the score model's gradient, averaged before each optimiser step, so the
                         replicas stay bit-identical (`check_identical` verifies it)
    agree                one flag for all ranks (stop after this step: Ctrl-C reached one of them)
    gather               every rank's particles and RNG states, to rank 0, which writes the checkpoint
"""

from __future__ import annotations

import datetime
import hashlib
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 300.0  # process-group start-up and any collective; PROLIFIC_DIST_TIMEOUT_S overrides


class DistributedError(RuntimeError):
    """The process group could not start, or a peer stopped answering; one line for the user."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def device(self, name: str) -> str:
        """The device setting for this process: "auto" or "cuda" become this rank's GPU."""
        if self.active and name in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return name

    def particles(self, n: int) -> list[int]:
        """The particle indices this rank holds: i with i % size == rank."""
        return [i for i in range(n) if i % self.size == self.rank]

    # -- collectives (no-ops in a world of one) ------------------------------------------------

    def barrier(self) -> None:
        if self.active:
            _collective("a barrier", dist.barrier)

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Replace every .grad by its mean over the ranks (one flattened all-reduce); a parameter
        without a gradient on this rank counts as zero, on every rank alike."""
        if not self.active or not parameters:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        _collective("averaging the score model's gradient", dist.all_reduce, flat)
        flat /= self.size
        offset = 0
        for p, g in zip(parameters, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g).to(g.dtype)
            offset += g.numel()

    def agree(self, flag: bool) -> bool:
        """True on every rank when it is true on any."""
        if not self.active:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self._collective_device())
        _collective("agreeing on a stop", dist.all_reduce, value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def gather(self, obj):
        """Every rank's `obj`, in rank order, on rank 0 (None elsewhere)."""
        if not self.active:
            return [obj]
        out = [None] * self.size if self.is_main else None
        _collective("gathering the checkpoint", dist.gather_object, obj, out, dst=0)
        return out

    def check_identical(self, tensors: dict[str, torch.Tensor], what: str) -> None:
        """Raise on every rank when the ranks' copies of `tensors` differ in any bit."""
        if not self.active:
            return
        digest = tensor_digest(tensors)
        digests = [None] * self.size
        _collective(f"comparing the {what}", dist.all_gather_object, digests, digest)
        different = [rank for rank, d in enumerate(digests) if d != digests[0]]
        if different:
            raise DistributedError(f"the {what} on rank(s) {different} drifted from rank 0's; the replicas "
                                   "must stay bit-identical (a nondeterministic kernel?)")

    def _collective_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _collective(what: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, dist.DistBackendError) as exc:  # a peer died or timed out
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DistributedError(f"rank {dist.get_rank()}: {what} failed, a peer process stopped ({first})") from None


def timeout_s() -> float:
    return float(os.environ.get("PROLIFIC_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))


def join() -> World:
    """This process's world: the process group joined when launched by torchrun (WORLD_SIZE > 1),
    else a world of one. Called once, by the command that runs a distributed stage."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    gpu = torch.cuda.is_available() and os.environ.get("PROLIFIC_DIST_BACKEND", "") != "gloo"
    if gpu:
        torch.cuda.set_device(local_rank)
    seconds = timeout_s()
    try:
        dist.init_process_group("nccl" if gpu else "gloo", timeout=datetime.timedelta(seconds=seconds))
    except Exception as exc:  # noqa: BLE001 -- any rendezvous failure is the user's one line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DistributedError(f"rank {rank} of {size} on {socket.gethostname()} could not join the process "
                               f"group within {seconds:g} s ({first}); check --rdzv-endpoint / MASTER_ADDR "
                               "and that every node started") from None
    return World(rank, size, local_rank)


def leave(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s generators: the run's own on rank 0 (so a world of one draws what
    a plain run draws), a different one on every other rank."""
    return seed + 1_000_003 * rank
