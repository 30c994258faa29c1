"""Checkpoints: one directory of weights.safetensors, optimizer.pt and state.json, written whole
and swapped in atomically, and `CheckpointKeys`, the one scheme every stage names its tensors by.

Loading never unpickles: safetensors, `torch.load(weights_only=True)` and JSON only; a damaged
checkpoint is an `ArtifactError`, a write that fails (a full disk) a `CheckpointWriteError`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..files import fsync_dir
from .directory import ArtifactError, display_path, sha256_file

WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE = "weights.safetensors", "optimizer.pt", "state.json"


class CheckpointWriteError(Exception):
    """A checkpoint could not be written (a full disk, say); nothing of it is left, and the one
    before it is untouched. The message is one line, shown to the user as is."""


@dataclass
class Checkpoint:
    step: int
    tensors: dict[str, torch.Tensor]
    optimizer_states: dict[str, dict]
    extra: dict = field(default_factory=dict)
    path: Path | None = None


def save_checkpoint(directory: Path | str, step: int, tensors: dict[str, torch.Tensor],
                    optimizer_states: dict[str, dict], extra: dict | None = None) -> Path:
    """Write a checkpoint and swap it in whole. Tensors (weights; RNG states as uint8 tensors) go to
    safetensors, optimizer state_dicts to a weights_only-loadable .pt, `extra` (JSON) to state.json.
    Crash safety: write `<dir>.tmp-<pid>/`, rename `<dir>` -> `<dir>.old`, rename the new one in,
    delete the old one; at every instant `<dir>` or `<dir>.old` is complete."""
    directory = Path(directory).resolve()
    old = directory.with_name(directory.name + ".old")
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    for stale in directory.parent.glob(f"{directory.name}.tmp-*"):  # left by a save that was cut off
        shutil.rmtree(stale, ignore_errors=True)
    weights = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    try:
        tmp.mkdir(parents=True)
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"step": str(step)})
        torch.save(optimizer_states, tmp / OPTIMIZER_FILE)
        files = {name: sha256_file(tmp / name) for name in (WEIGHTS_FILE, OPTIMIZER_FILE)}
        # state.json is written last and lists the hashes: a checkpoint is only as valid as its state file
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, "extra": extra or {}, "files": files}, indent=2))
        for name in (WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE):
            with open(tmp / name, "rb+") as f:
                os.fsync(f.fileno())
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk gets its space back for the manifest
        # safetensors reports a write error as SafetensorError, torch.save as RuntimeError
        if isinstance(exc, (OSError, SafetensorError, RuntimeError)):
            size = (_nbytes(weights) + _nbytes(optimizer_states)) / 2**20
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointWriteError(f"cannot write the checkpoint of step {step} ({size:.1f} MiB) in "
                                       f"{display_path(directory.parent)}: {reason}") from None
        raise
    fsync_dir(tmp)
    if directory.exists():
        if old.exists():  # left by a crash after the new one was already in place
            shutil.rmtree(old)
        os.replace(directory, old)
    os.replace(tmp, directory)
    fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def _nbytes(value: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint part."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


def find_checkpoint(directory: Path | str) -> Path | None:
    """The complete checkpoint to resume from: `<dir>`, or `<dir>.old` when a save was cut off mid-swap."""
    directory = Path(directory).resolve()
    for candidate in (directory, directory.with_name(directory.name + ".old")):
        if (candidate / STATE_FILE).is_file():
            return candidate
    return None


def load_checkpoint(directory: Path | str, map_location: str | torch.device = "cpu") -> Checkpoint:
    directory = Path(directory).resolve()
    found = find_checkpoint(directory)
    if found is None:
        if directory.exists():
            raise ArtifactError(f"checkpoint at {display_path(directory)} is corrupt or incomplete: no {STATE_FILE}; "
                                "delete it to start over")
        raise ArtifactError(f"no checkpoint at {display_path(directory)}")

    def corrupt(reason: str) -> ArtifactError:
        return ArtifactError(f"checkpoint at {display_path(found)} is corrupt or incomplete: {reason}; "
                             "delete it to start over")

    try:
        state = json.loads((found / STATE_FILE).read_text(encoding="utf-8"))
        step, extra, files = int(state["step"]), dict(state["extra"]), dict(state["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise corrupt(f"{STATE_FILE} unreadable ({exc})") from None
    for name, expected in files.items():
        if not (found / name).is_file():
            raise corrupt(f"{name} is missing")
        if sha256_file(found / name) != expected:
            raise corrupt(f"{name} does not match its recorded hash")
    try:
        tensors = load_file(str(found / WEIGHTS_FILE), device=str(map_location))
        optimizer_states = torch.load(found / OPTIMIZER_FILE, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- any parse failure of a damaged file is the user's "corrupt" case
        raise corrupt(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    return Checkpoint(step=step, tensors=tensors, optimizer_states=optimizer_states, extra=extra, path=found)


class CheckpointKeys:
    """The checkpoint key scheme of every stage: a part's tensors are its own state_dict keys
    under "<part>.", and its optimiser's state sits under the part's name. Stages write with
    these names and `outputs.py` reads with them; nothing else spells a key."""

    DMTET = "dmtet."  # extract, geometry: the DMTet SDF, deformation and tet grid
    FIELD = "field."  # texture: the texture field
    BACKGROUND = "background."  # texture: its background
    DISTILLER = "distiller."  # the distiller's own tensors (VSD: the score model's LoRA and camera MLP)
    GENERATOR = "rng.generator"  # the host generator's state (every draw of the loop)
    TENSOR_GENERATOR = "rng.tensor_generator"  # the accelerator's generator, when it is a separate one
    DISTILLER_OPTIMIZER = "distiller"  # the distiller's optimiser state

    @staticmethod
    def particle(i: int) -> str:
        """NeRF stage: particle i's parts, + "field.", "background.", "occupancy." or "image"."""
        return f"particle{i}."

    @staticmethod
    def generator(rank: int) -> str:
        """Rank `rank`'s host generator (rank 0's is GENERATOR, as in a run of one process)."""
        return CheckpointKeys.GENERATOR if rank == 0 else f"rng.rank{rank}.generator"

    @staticmethod
    def tensor_generator(rank: int) -> str:
        return CheckpointKeys.TENSOR_GENERATOR if rank == 0 else f"rng.rank{rank}.tensor_generator"

    @staticmethod
    def particle_optimizer(i: int) -> str:
        """The optimiser state of particle i (the problem's i-th optimiser)."""
        return f"particle{i}"


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose key starts with `prefix`, with it removed (one part of a checkpoint)."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
