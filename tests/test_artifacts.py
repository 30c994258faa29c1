"""The artifact contract: slugs, atomic writes, run/stage lifecycle, crash-safe checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from prolificli.files import write_json_atomic
from prolificli.rundir import checkpoint as checkpoint_module
from prolificli.rundir import directory as directory_module
from prolificli.rundir.checkpoint import load_checkpoint, save_checkpoint
from prolificli.rundir.directory import ArtifactError, RunDir, StageDir, sha256_file, slugify

# --------------------------------------------------------------------------------------------
# slugs and atomic writes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "slug"),
    [
        ("An elephant skull!", "an-elephant-skull"),
        ("a DSLR photo of  a   squirrel", "a-dslr-photo-of-a-squirrel"),
        ("Café crème, 3D", "cafe-creme-3d"),
        ("--already--dashed--", "already-dashed"),
        ("", "run"),
        ("!!!", "run"),
        ("日本語", "run"),
    ],
)
def test_slugify(prompt, slug):
    assert slugify(prompt) == slug


def test_slugify_cuts_long_prompts_at_a_word_boundary():
    prompt = "a zoomed out DSLR photo of a baby bunny sitting on top of a stack of pancakes, highly detailed"
    slug = slugify(prompt, max_len=30)
    assert len(slug) <= 30 and not slug.endswith("-")
    assert slug == "a-zoomed-out-dslr-photo-of-a"  # the next word would cross 30 characters
    assert slugify("x" * 100, max_len=10) == "x" * 10  # one long word: hard cut


def test_atomic_write_leaves_only_the_target(tmp_path):
    target = tmp_path / "sub" / "data.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"a": 2, "b": [1, 2]})
    assert json.loads(target.read_text()) == {"a": 2, "b": [1, 2]}
    assert sorted(p.name for p in target.parent.iterdir()) == ["data.json"]


def test_atomic_write_failure_keeps_old_file_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "data.json"
    write_json_atomic(target, {"version": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_json_atomic(target, {"version": 2})
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["data.json"]


def test_sha256_file(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)  # spans several read blocks
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def test_versions_lists_the_stack():
    info = directory_module.versions()
    assert set(info) == {"python", "torch", "diffusers", "peft", "prolificli"}
    assert info["torch"] == torch.__version__ and info["prolificli"]


# --------------------------------------------------------------------------------------------
# run directories
# --------------------------------------------------------------------------------------------


def test_run_dir_create_and_reopen(tmp_path):
    run = RunDir.create(tmp_path / "runs" / "skull", "An elephant skull", 7, "prolificdreamer")
    info = json.loads((run.path / "run.json").read_text())
    assert info["prompt"] == "An elephant skull" and info["seed"] == 7 and info["recipe"] == "prolificdreamer"
    assert info["prolificli"] and "T" in info["created"]
    assert RunDir.open(tmp_path / "runs" / "skull").info == info
    again = RunDir.create(run.path, "An elephant skull", 7, "prolificdreamer")  # same prompt: reuse
    assert again.path == run.path and again.info == info
    assert run.stage("nerf").path == run.path / "nerf"


def test_run_dir_refusals(tmp_path):
    run = RunDir.create(tmp_path / "a", "a cat", 0, "r")
    with pytest.raises(ArtifactError, match="already holds a run for the prompt 'a cat'"):
        RunDir.create(run.path, "a dog", 0, "r")
    with pytest.raises(ArtifactError, match="already exists"):
        RunDir.create(run.path, "a cat", 0, "r", exist_ok_same_prompt=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="not a prolificli run"):
        RunDir.create(tmp_path / "busy", "a cat", 0, "r")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="is a file"):
        RunDir.create(tmp_path / "file", "a cat", 0, "r")
    with pytest.raises(ArtifactError, match="no run.json"):
        RunDir.open(tmp_path / "busy")
    (tmp_path / "busy" / "run.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable"):
        RunDir.open(tmp_path / "busy")
    (tmp_path / "empty").mkdir()
    assert RunDir.create(tmp_path / "empty", "a cat", 0, "r").info["prompt"] == "a cat"


# --------------------------------------------------------------------------------------------
# stage manifests and metrics
# --------------------------------------------------------------------------------------------


def test_manifest_lifecycle(tmp_path):
    run = RunDir.create(tmp_path / "run", "a cat", 0, "r")
    model_file = tmp_path / "input.bin"
    model_file.write_bytes(b"weights")
    stage = run.stage("nerf")
    assert stage.manifest is None
    stage.manifest_interval_s = 3600.0
    stage.begin({"lr": 0.01, "betas": (0.9, 0.99)}, steps=100, inputs=[model_file])
    manifest = stage.manifest
    assert manifest["stage"] == "nerf" and manifest["status"] == "running"
    assert (manifest["step"], manifest["steps"]) == (0, 100)
    assert manifest["config"] == {"lr": 0.01, "betas": [0.9, 0.99]}
    assert manifest["inputs"] == [{"path": str(model_file.resolve()),
                                   "sha256": hashlib.sha256(b"weights").hexdigest()}]
    assert set(manifest["versions"]) == {"python", "torch", "diffusers", "peft", "prolificli"}
    assert manifest["timings"]["started"] and manifest["timings"]["finished"] is None
    assert stage.previews_dir.is_dir()

    assert stage.progress(10) is False  # throttled: nothing written
    assert stage.manifest["step"] == 0
    assert stage.progress(20, force=True) is True
    assert stage.manifest["step"] == 20

    (stage.path / "field.safetensors").write_bytes(b"")
    stage.finish("complete", 100, outputs=[stage.path / "field.safetensors", "previews/final.png"])
    manifest = stage.manifest
    assert manifest["status"] == "complete" and manifest["step"] == 100 and manifest["error"] is None
    assert manifest["outputs"] == ["field.safetensors", "previews/final.png"]
    assert manifest["timings"]["finished"] and manifest["timings"]["seconds"] >= 0
    assert stage.require_complete("nerf")["status"] == "complete"
    with pytest.raises(ValueError):
        stage.finish("running", 100)


def test_failed_stage_records_error(tmp_path):
    stage = StageDir(tmp_path / "nerf")
    stage.begin({}, steps=10)
    stage.finish("failed", 3, error="CUDA out of memory")
    assert stage.manifest["status"] == "failed" and stage.manifest["error"] == "CUDA out of memory"


def test_require_complete_messages(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunDir.create(Path("runs/x"), "a cat", 0, "r")
    nerf = run.stage("nerf")
    with pytest.raises(ArtifactError, match=r"runs/x/nerf has no manifest.json; run `prolific nerf` first"):
        nerf.require_complete("nerf")
    nerf.begin({}, steps=2000)
    nerf.finish("interrupted", 120)
    with pytest.raises(ArtifactError) as info:
        nerf.require_complete("nerf")
    assert str(info.value) == ("runs/x/nerf is not complete (status: interrupted at step 120/2000); "
                               "finish it with `prolific nerf --resume runs/x`")
    mesh = run.stage("mesh")
    mesh.begin({}, steps=10)
    mesh.finish("complete", 10)
    with pytest.raises(ArtifactError, match="runs/x/mesh holds a 'mesh' stage, but a 'nerf' stage is needed"):
        StageDir(Path("runs/x/mesh")).require_complete("nerf")


def test_metrics_jsonl_survives_torn_line(tmp_path):
    stage = StageDir(tmp_path / "nerf")
    stage.begin({}, steps=10)
    stage.log_metrics(0, {"loss": torch.tensor(1.5), "lr": 0.01})
    stage.log_metrics(10, {"loss": 0.75})
    # line-buffered: both lines are on disk before close, as they would be at a crash
    lines = (tmp_path / "nerf" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"step": 0, "loss": 1.5, "lr": 0.01}, {"step": 10, "loss": 0.75}]
    stage.close()
    with open(stage.metrics_path, "a") as f:  # a crash mid-write
        f.write('{"step": 20, "lo')
    resumed = StageDir(tmp_path / "nerf")
    resumed.log_metrics(30, {"loss": 0.5})
    resumed.close()
    lines = stage.metrics_path.read_text().splitlines()
    assert lines[2] == '{"step": 20, "lo'  # the torn line stays on its own line ...
    assert json.loads(lines[3]) == {"step": 30, "loss": 0.5}  # ... and does not swallow the next record
    assert [r["step"] for r in resumed.read_metrics()] == [0, 10, 30]


def test_resume_keeps_start_time_and_drops_lost_metrics(tmp_path):
    stage = StageDir(tmp_path / "nerf")
    stage.begin({"a": 1}, steps=100)
    for step in (0, 10, 20, 30):
        stage.log_metrics(step, {"loss": float(step)})
    stage.finish("interrupted", 30)
    started = stage.manifest["timings"]["started"]

    resumed = StageDir(tmp_path / "nerf")
    resumed.begin({"a": 1}, steps=100, step=20)  # the last checkpoint was at step 20
    assert resumed.manifest["status"] == "running" and resumed.manifest["step"] == 20
    assert resumed.manifest["timings"]["started"] == started
    assert [r["step"] for r in resumed.read_metrics()] == [0, 10, 20]
    resumed.close()

    fresh = StageDir(tmp_path / "nerf")
    fresh.begin({"a": 1}, steps=100)  # starting over forgets the old metrics
    assert fresh.read_metrics() == [] and fresh.manifest["step"] == 0


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------


def _train(model, optimizer, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 4, generator=generator)
        loss = (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.01)


def test_checkpoint_round_trip_resumes_bit_for_bit(tmp_path):
    model, optimizer = _model_and_optimizer()
    _train(model, optimizer, steps=5, seed=1)
    rng = torch.Generator().manual_seed(123)
    torch.randn(3, generator=rng)
    tensors = {**{f"model/{k}": v for k, v in model.state_dict().items()}, "rng/sampler": rng.get_state()}
    saved = {name: value.clone() for name, value in tensors.items()}  # state_dict() aliases live weights
    save_checkpoint(tmp_path / "checkpoint", 5, tensors, {"model": optimizer.state_dict()}, {"note": "hi"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no temp or .old directories

    _train(model, optimizer, steps=3, seed=2)  # the uninterrupted run
    expected_next = torch.randn(3, generator=rng)

    checkpoint = load_checkpoint(tmp_path / "checkpoint")
    assert checkpoint.step == 5 and checkpoint.extra == {"note": "hi"}
    assert checkpoint.tensors.keys() == saved.keys()
    for name, value in saved.items():
        assert torch.equal(checkpoint.tensors[name], value)
    fresh_model, fresh_optimizer = _model_and_optimizer()
    fresh_model.load_state_dict({k.removeprefix("model/"): v for k, v in checkpoint.tensors.items()
                                 if k.startswith("model/")})
    fresh_optimizer.load_state_dict(checkpoint.optimizer_states["model"])
    _train(fresh_model, fresh_optimizer, steps=3, seed=2)
    for resumed, uninterrupted in zip(fresh_model.parameters(), model.parameters()):
        assert torch.equal(resumed, uninterrupted)
    restored = torch.Generator()
    restored.set_state(checkpoint.tensors["rng/sampler"])
    assert torch.equal(torch.randn(3, generator=restored), expected_next)


def test_checkpoint_tensors_equal_saved_values(tmp_path):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {"transposed": base.t(), "shared_a": base, "shared_b": base[0], "half": base.half()}
    save_checkpoint(tmp_path / "ckpt", 1, tensors, {})
    loaded = load_checkpoint(tmp_path / "ckpt").tensors
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype and torch.equal(loaded[name], value)


def _small_checkpoint(directory: Path, step: int) -> None:
    save_checkpoint(directory, step, {"w": torch.full((4,), float(step))}, {"opt": {"state": {}, "param_groups": []}})


def _rewrite_hash(directory: Path, name: str) -> None:
    state = json.loads((directory / "state.json").read_text())
    state["files"][name] = sha256_file(directory / name)
    (directory / "state.json").write_text(json.dumps(state))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "garbage_with_matching_hash", "missing_state",
                                    "bad_state", "optimizer_garbage", "missing_weights"])
def test_damaged_checkpoint_is_an_artifact_error(tmp_path, damage):
    directory = tmp_path / "checkpoint"
    _small_checkpoint(directory, 3)
    weights = directory / "weights.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:40])
    elif damage == "garbage":
        weights.write_bytes(os.urandom(200))
    elif damage == "garbage_with_matching_hash":  # a parse failure, not just the hash check
        weights.write_bytes(b"\xff" * 8 + os.urandom(100))
        _rewrite_hash(directory, "weights.safetensors")
    elif damage == "missing_state":
        (directory / "state.json").unlink()
    elif damage == "bad_state":
        (directory / "state.json").write_text('{"step": ')
    elif damage == "optimizer_garbage":
        (directory / "optimizer.pt").write_bytes(b"PK\x03\x04 not a zip")
        _rewrite_hash(directory, "optimizer.pt")
    elif damage == "missing_weights":
        weights.unlink()
    with pytest.raises(ArtifactError, match=r"checkpoint at .* is corrupt or incomplete: .*; delete it to start over"):
        load_checkpoint(directory)


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["PROLIFICLI_TEST_MARKER"]),))


def test_checkpoint_never_unpickles_code(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PROLIFICLI_TEST_MARKER", str(marker))
    directory = tmp_path / "checkpoint"
    _small_checkpoint(directory, 1)
    torch.save({"opt": _Payload()}, directory / "optimizer.pt")
    _rewrite_hash(directory, "optimizer.pt")
    with pytest.raises(ArtifactError, match="corrupt or incomplete"):
        load_checkpoint(directory)
    assert not marker.exists()


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ArtifactError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "checkpoint")
    assert checkpoint_module.find_checkpoint(tmp_path / "checkpoint") is None


@pytest.mark.parametrize("failing_call", [1, 2])
def test_crash_mid_swap_leaves_a_loadable_checkpoint(tmp_path, monkeypatch, failing_call):
    directory = tmp_path / "checkpoint"
    _small_checkpoint(directory, 1)
    real_replace, calls = os.replace, []

    def crashing_replace(src, dst):
        calls.append((src, dst))
        if len(calls) == failing_call:
            raise KeyboardInterrupt  # the process dies here
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(KeyboardInterrupt):
        _small_checkpoint(directory, 2)
    monkeypatch.setattr(os, "replace", real_replace)

    # call 1 moves checkpoint -> checkpoint.old; dying after it leaves only the .old copy
    assert directory.exists() == (failing_call == 1)
    checkpoint = load_checkpoint(directory)
    assert checkpoint.step == 1 and torch.equal(checkpoint.tensors["w"], torch.full((4,), 1.0))

    _small_checkpoint(directory, 3)  # the next save recovers and cleans up
    assert load_checkpoint(directory).step == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_crash_while_writing_files_keeps_previous(tmp_path, monkeypatch):
    directory = tmp_path / "checkpoint"
    _small_checkpoint(directory, 1)

    def crashing_save(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        _small_checkpoint(directory, 2)
    assert load_checkpoint(directory).step == 1


def test_crash_before_old_is_deleted(tmp_path):
    directory = tmp_path / "checkpoint"
    _small_checkpoint(directory, 1)
    _small_checkpoint(tmp_path / "checkpoint.old", 0)  # both present: the swap itself had finished
    assert load_checkpoint(directory).step == 1
    _small_checkpoint(directory, 2)
    assert load_checkpoint(directory).step == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_a_full_disk_leaves_the_previous_checkpoint_and_no_partial_one(tmp_path: Path, monkeypatch) -> None:
    import errno

    directory = tmp_path / "checkpoint"
    weights = {"w": torch.zeros(256, 1024)}  # 1 MiB of float32
    checkpoint_module.save_checkpoint(directory, 1, {"w": torch.ones(4)}, {})

    def no_space(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint_module.torch, "save", no_space)
    with pytest.raises(checkpoint_module.CheckpointWriteError) as info:
        checkpoint_module.save_checkpoint(directory, 2, weights, {"opt": {"state": {0: {"m": torch.zeros(256, 1024)}}}})
    message = str(info.value)
    assert "\n" not in message and "step 2 (2.0 MiB)" in message and "No space left on device" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert checkpoint_module.load_checkpoint(directory).step == 1
