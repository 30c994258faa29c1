"""The on-disk artifact contract: run directories, stage manifests and metrics (checkpoints: checkpoint.py).

    runs/<slug>/run.json                 prompt, seed, recipe, created, prolificli version
    runs/<slug>/<stage>/manifest.json    status, step/steps, resolved config, inputs, outputs, versions, timings
    runs/<slug>/<stage>/checkpoint/      weights.safetensors + optimizer.pt + state.json
    runs/<slug>/<stage>/previews/        PNGs;  runs/<slug>/<stage>/metrics.jsonl

Every file is written atomically (temp file + fsync + rename) and a checkpoint is swapped in as a
whole directory, so a crash at any moment leaves the previous complete state on disk. Loading never
unpickles: safetensors, `torch.load(weights_only=True)` and JSON only. Failures a user can cause
(wrong directory, unfinished stage, damaged checkpoint) are `ArtifactError`s with one-line messages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import re
import time
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import torch

from .. import __version__
from ..files import write_bytes_atomic, write_json_atomic

STATUSES = ("running", "interrupted", "complete", "failed")


class ArtifactError(Exception):
    """A run directory, stage or checkpoint that cannot be used; the message is shown to the user as is."""


def slugify(prompt: str, max_len: int = 60) -> str:
    """'An elephant skull!' -> 'an-elephant-skull'; accents folded to ASCII; never empty."""
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    if len(slug) > max_len:  # cut at a word boundary when there is one
        cut = slug[: max_len + 1].rfind("-")
        slug = slug[: cut if cut > 0 else max_len].strip("-")
    return slug or "run"


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def display_path(path: Path) -> str:
    """Relative to the working directory when under it, so messages read 'runs/x/nerf'."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{what} {display_path(path)} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{what} {display_path(path)} is unreadable: expected a JSON object")
    return data


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_path(path: Path) -> str:
    """A file's hash, or for a directory a hash over its files' relative paths and hashes."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def _package_version(package: str) -> str | None:
    try:
        return metadata.version(package)  # metadata, not an import: diffusers is slow to import
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """The versions that decide whether a run reproduces."""
    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": _package_version("diffusers"),
            "peft": _package_version("peft"), "prolificli": __version__}


# --------------------------------------------------------------------------------------------
# Run directory and stages
# --------------------------------------------------------------------------------------------


@dataclass
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path).expanduser().resolve()

    @classmethod
    def create(cls, path: Path | str, prompt: str, seed: int, recipe_name: str, *,
               exist_ok_same_prompt: bool = True) -> RunDir:
        """A new run directory, or the existing one when it holds a run of the same prompt."""
        run = cls(Path(path))
        if run.path.exists() and not run.path.is_dir():
            raise ArtifactError(f"{display_path(run.path)} is a file, not a run directory")
        if (run.path / "run.json").exists():
            existing = run.info.get("prompt")
            if existing != prompt:
                raise ArtifactError(f"{display_path(run.path)} already holds a run for the prompt {existing!r}; "
                                    "choose another output directory or delete it")
            if not exist_ok_same_prompt:
                raise ArtifactError(f"{display_path(run.path)} already exists; resume it with --resume or delete it")
            return run
        if run.path.is_dir() and any(run.path.iterdir()):
            raise ArtifactError(f"{display_path(run.path)} is not empty and is not a prolificli run (no run.json); "
                                "choose another output directory")
        run.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run.path / "run.json", {"prompt": prompt, "seed": seed, "recipe": recipe_name,
                                                  "created": _now(), "prolificli": __version__})
        return run

    @classmethod
    def open(cls, path: Path | str) -> RunDir:
        run = cls(Path(path))
        if not (run.path / "run.json").is_file():
            raise ArtifactError(f"{display_path(run.path)} is not a prolificli run directory (no run.json)")
        run.info  # noqa: B018 -- fail now on an unreadable run.json, not later
        return run

    @property
    def info(self) -> dict:
        return _read_json(self.path / "run.json", "run file")

    def stage(self, name: str) -> StageDir:
        return StageDir(self.path / name, name)


class StageDir:
    """One stage's directory: its manifest lifecycle, metrics log, previews and checkpoint."""

    manifest_interval_s = 5.0  # progress() rewrites the manifest at most this often

    def __init__(self, path: Path | str, name: str | None = None) -> None:
        self.path = Path(path).expanduser().resolve()
        self.name = name or self.path.name
        self.checkpoint_dir = self.path / "checkpoint"
        self.previews_dir = self.path / "previews"
        self.metrics_path = self.path / "metrics.jsonl"
        self._manifest: dict | None = None
        self._metrics_file: TextIO | None = None
        self._clock_start = time.monotonic()
        self._seconds_before = 0.0  # time spent in earlier sessions of a resumed stage
        self._last_write = 0.0

    @property
    def manifest(self) -> dict | None:
        path = self.path / "manifest.json"
        return _read_json(path, "manifest") if path.is_file() else None

    def begin(self, config: Any, steps: int, inputs: list[Path] = (), *, step: int = 0,
              details: dict | None = None) -> None:
        """Mark the stage running. `step` > 0 resumes from a checkpoint: timings carry over and
        metrics logged after that step (lost work) are dropped. `details`: what else the manifest
        should say (a distributed run: its processes, what a resume re-assigned)."""
        config = _plain_config(config)
        self.close()  # the metrics file may be rewritten below
        self.path.mkdir(parents=True, exist_ok=True)
        self.previews_dir.mkdir(exist_ok=True)
        old = self.manifest if step > 0 else None
        old_timings = (old or {}).get("timings", {})
        self._seconds_before = float(old_timings.get("seconds") or 0.0)
        self._clock_start = time.monotonic()
        self._manifest = {
            "stage": self.name, "status": "running", "step": step, "steps": steps, "config": config,
            **({"details": details} if details else {}),
            "inputs": [{"path": str(Path(p).resolve()), "sha256": _sha256_path(Path(p))} for p in inputs],
            "outputs": [], "versions": versions(),
            "timings": {"started": old_timings.get("started") or _now(), "updated": None, "finished": None,
                        "seconds": None},
            "error": None,
        }
        if step > 0 and self.metrics_path.exists():
            kept = [record for record in self.read_metrics() if record.get("step", 0) <= step]
            write_bytes_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        elif step == 0:
            self.metrics_path.unlink(missing_ok=True)
        self._write_manifest()

    def progress(self, step: int, *, force: bool = False) -> bool:
        """Record the current step; touches the disk only every `manifest_interval_s` unless forced."""
        if self._manifest is None:
            raise RuntimeError("StageDir.progress() before begin()")
        self._manifest["step"] = step
        if force or time.monotonic() - self._last_write >= self.manifest_interval_s:
            self._write_manifest()
            return True
        return False

    def finish(self, status: str, step: int, outputs: list[Path | str] = (), error: str | None = None) -> None:
        if status not in STATUSES[1:]:
            raise ValueError(f"finish status must be one of {STATUSES[1:]}, got {status!r}")
        if self._manifest is None:
            raise RuntimeError("StageDir.finish() before begin()")
        self._manifest.update(status=status, step=step, error=error,
                              outputs=[os.path.relpath(Path(p).resolve(), self.path) if Path(p).is_absolute()
                                       else str(p) for p in outputs])
        self._manifest["timings"]["finished"] = _now()
        self._write_manifest()
        self.close()

    def _write_manifest(self) -> None:
        timings = self._manifest["timings"]
        timings["updated"] = _now()
        timings["seconds"] = round(self._seconds_before + time.monotonic() - self._clock_start, 3)
        write_json_atomic(self.path / "manifest.json", self._manifest)
        self._last_write = time.monotonic()

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """Append one JSON line; line-buffered, so every complete line survives a crash."""
        if self._metrics_file is None:
            self.path.mkdir(parents=True, exist_ok=True)
            self._metrics_file = open(self.metrics_path, "a+", buffering=1, encoding="utf-8")
            self._metrics_file.seek(0, os.SEEK_END)
            if self._metrics_file.tell() > 0:  # a crash may have torn the last line: start a fresh one
                self._metrics_file.seek(self._metrics_file.tell() - 1)
                if self._metrics_file.read(1) != "\n":
                    self._metrics_file.write("\n")
        record = {"step": step, **{k: v.item() if hasattr(v, "item") else v for k, v in metrics.items()}}
        self._metrics_file.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict]:
        """Every complete record of metrics.jsonl; a torn line from a crash is skipped."""
        if not self.metrics_path.exists():
            return []
        records = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def close(self) -> None:
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None

    def require_complete(self, expected_stage: str) -> dict:
        """The manifest of a finished stage of the expected kind, or an ArtifactError saying what to do."""
        where = display_path(self.path)
        manifest = self.manifest
        if manifest is None:
            raise ArtifactError(f"{where} has no manifest.json; run `prolific {expected_stage}` first")
        kind = manifest.get("stage")
        if kind != expected_stage:
            raise ArtifactError(f"{where} holds a {kind!r} stage, but a {expected_stage!r} stage is needed here")
        if manifest.get("status") != "complete":
            raise ArtifactError(
                f"{where} is not complete (status: {manifest.get('status')} at step "
                f"{manifest.get('step')}/{manifest.get('steps')}); finish it with "
                f"`prolific {expected_stage} --resume {display_path(self.path.parent)}`")
        return manifest


def _plain_config(config: Any) -> dict:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        from ..config import to_dict

        config = to_dict(config)
    return json.loads(json.dumps(config))  # fails early on anything JSON cannot hold; tuples -> lists
