"""Particles across torch.distributed ranks (gloo, two CPU processes launched by torchrun), and
the lock that keeps two processes from writing one stage."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prolificli.recipe_files import PACKAGE_RECIPES
from prolificli.rundir.checkpoint import load_checkpoint
from prolificli.rundir.lock import LockError, StageLock

pytestmark = pytest.mark.slow  # whole stages, torchrun, Chromium or a download: python -m pytest -m 'not slow' skips them

REPO = Path(__file__).resolve().parent.parent
TINY_RECIPE = str(PACKAGE_RECIPES / "tiny.yaml")
ENV = {**os.environ, "PROLIFIC_DIST_BACKEND": "gloo", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]


def plain(*args: str) -> list[str]:
    return [sys.executable, "-m", "prolificli", *args]


def nerf_args(model: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["nerf", "a cube", "--recipe", TINY_RECIPE, "--model", str(model), "--out", str(out), "--device", "cpu",
            "--particles", "4", "--steps", str(steps), "--set", "nerf.checkpoint_every=5", *extra]


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)


def manifest(out: Path) -> dict:
    return json.loads((out / "nerf" / "manifest.json").read_text())


def distributed_details(record: dict) -> dict:
    """What the manifest says of the processes (without the parameter count and the prior's source,
    which every stage records)."""
    return {k: v for k, v in record["details"].items() if k not in ("distiller_parameters", "prior")}


def wait_for_checkpoint(out: Path, after: int = 0, timeout: float = 180) -> int:
    """Block until the stage has a checkpoint past step `after`; its step."""
    state = out / "nerf" / "checkpoint" / "state.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            step = json.loads(state.read_text())["step"]
            if step > after:
                return step
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint past step {after} in {out} within {timeout} s")


def interrupt(process: subprocess.Popen) -> int:
    """Ctrl-C as a terminal sends it: to the whole process group (torchrun and its workers)."""
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=120)
    return process.returncode


def test_two_ranks_hold_four_particles_and_identical_score_model_replicas(tiny_model_dir, tmp_path):
    """Each rank dumps its own replica of the score model at the end; the test compares them."""
    script = tmp_path / "worker.py"
    script.write_text(f"""
import sys
from pathlib import Path
from safetensors.torch import save_file
from prolificli.distributed import join, leave
from prolificli.methods import build_recipe
from prolificli.stages import nerf

captured = []
original = nerf.build_distiller
nerf.build_distiller = lambda *args, **kwargs: captured.append(original(*args, **kwargs)) or captured[-1]
world = join()
recipe = build_recipe({TINY_RECIPE!r}, ["prior.model={tiny_model_dir}", "prior.device=cpu", "nerf.particles=4",
                                        "nerf.steps=6"])
out = Path(sys.argv[1])
nerf.run(out, recipe, prompt="a cube", world=world)
state = captured[0].state_dict().tensors
save_file({{k: v.contiguous() for k, v in state.items()}}, str(out.parent / f"replica{{world.rank}}.safetensors"))
leave(world)
""")
    out = tmp_path / "run"
    result = run(torchrun(2, str(script), str(out)))
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = load_checkpoint(out / "nerf" / "checkpoint")
    assert {k.split(".")[0] for k in checkpoint.tensors if k.startswith("particle")} == \
        {"particle0", "particle1", "particle2", "particle3"}
    assert {"particle0", "particle1", "particle2", "particle3", "distiller"} == set(checkpoint.optimizer_states)
    assert {"rng.generator", "rng.rank1.generator"} <= set(checkpoint.tensors)
    assert checkpoint.extra["processes"] == 2 and distributed_details(manifest(out)) == {"processes": 2}
    rank0, rank1 = (load_file(tmp_path / f"replica{r}.safetensors") for r in (0, 1))
    assert rank0.keys() == rank1.keys() and rank0
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert all(torch.equal(rank0[k], checkpoint.tensors[f"distiller.{k}"]) for k in rank0)
    # the replicas moved (the averaged gradient reached them), so equality means something
    assert any(k.endswith("lora_B.score_model.weight") and rank0[k].abs().sum() > 0 for k in rank0)


def test_an_interrupted_two_rank_run_resumes_on_one_process_and_on_two(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    process = start(torchrun(2, "-m", "prolificli", *nerf_args(tiny_model_dir, out, 60)))
    wait_for_checkpoint(out)
    assert interrupt(process) != 0
    first = manifest(out)
    assert first["status"] == "interrupted" and 0 < first["step"] < 60

    process = start(plain("nerf", "--resume", str(out)))  # one process: all four particles on rank 0
    wait_for_checkpoint(out, after=first["step"])
    assert interrupt(process) == 130
    second = manifest(out)
    assert second["status"] == "interrupted" and second["step"] > first["step"]
    assert distributed_details(second) == {"resumed_from_processes": 2, "rng_dropped_ranks": [1], "rng_fresh_ranks": []}

    result = run(torchrun(2, "-m", "prolificli", "nerf", "--resume", str(out), "--json"))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])  # rank 0 alone prints
    assert summary["status"] == "complete" and summary["step"] == 60
    assert result.stdout.count('"run_dir"') == 1
    assert distributed_details(manifest(out)) == {"processes": 2, "resumed_from_processes": 1, "rng_dropped_ranks": [],
                                        "rng_fresh_ranks": [1]}
    assert len({k.split(".")[0] for k in load_checkpoint(out / "nerf" / "checkpoint").tensors
                if k.startswith("particle")}) == 4


def worker_pid(launcher: int, rank: int) -> int:
    """The pid of the launcher's worker of `rank` (read from /proc: its parent and RANK)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no worker of rank {rank} under pid {launcher}")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads worker pids from /proc")
def test_a_rank_that_dies_stops_the_other_within_60_s_and_the_run_resumes(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    process = start(torchrun(2, "-m", "prolificli", *nerf_args(tiny_model_dir, out, 80)))
    wait_for_checkpoint(out)
    os.kill(worker_pid(process.pid, 1), signal.SIGKILL)
    killed = time.monotonic()
    _, err = process.communicate(timeout=120)
    assert time.monotonic() - killed < 60 and process.returncode != 0
    assert re.search(r"Root Cause[\s\S]*rank\s*:\s*1\b", err), err[-2000:]  # torchrun names the rank that died
    stopped = manifest(out)
    assert stopped["status"] in ("running", "failed", "interrupted") and stopped["step"] < 80

    result = run(plain("nerf", "--resume", str(out), "--json"))  # on one process, to the end
    assert result.returncode == 0, result.stderr[-3000:]
    assert manifest(out)["status"] == "complete" and manifest(out)["step"] == 80
    assert manifest(out)["details"]["resumed_from_processes"] == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_process_group_that_does_not_start_is_a_one_line_error_within_its_timeout(tiny_model_dir, tmp_path):
    env = {**ENV, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "PROLIFIC_DIST_TIMEOUT_S": "3"}  # rank 0 never comes
    tic = time.monotonic()
    result = subprocess.run(plain(*nerf_args(tiny_model_dir, tmp_path / "run", 4)), env=env, capture_output=True,
                            text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2 and time.monotonic() - tic < 60
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "rank 1 of 2" in errors[0] and "could not join the process group within 3 s" in errors[0]
    assert not (tmp_path / "run").exists()


def test_replicas_that_drift_apart_are_an_error_on_every_rank(tmp_path):
    script = tmp_path / "drift.py"
    script.write_text("""
import sys
import torch
from prolificli.distributed import DistributedError, join, leave
world = join()
same = {"w": torch.arange(4.0)}
world.check_identical(same, "score model replicas")  # equal: passes
try:
    world.check_identical({"w": torch.arange(4.0) + world.rank * 1e-7}, "score model replicas")
except DistributedError as exc:  # each rank its own file: two processes' prints may interleave
    open(sys.argv[1] + f"/drift{world.rank}.txt", "w").write(str(exc))
leave(world)
""")
    result = run(torchrun(2, str(script), str(tmp_path)), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    for rank in (0, 1):
        assert "rank(s) [1] drifted from rank 0's" in (tmp_path / f"drift{rank}.txt").read_text()


def test_a_second_writer_gets_the_lock_error_and_the_first_completes(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    first = start(plain(*nerf_args(tiny_model_dir, out, 200)))  # long enough to outlive the second's start-up
    wait_for_checkpoint(out)
    second = run(plain("nerf", "--resume", str(out)))
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert second.returncode == 2 and lines[-1].startswith("error:") and "Traceback" not in second.stderr
    assert f"is being written by pid {first.pid}" in " ".join(second.stderr.split())
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert manifest(out)["status"] == "complete"
    assert not (out / "nerf" / "lock.json").exists()


def dead_pid() -> int:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def test_the_stage_lock_is_exclusive_and_a_dead_holders_lock_is_taken_over(tmp_path):
    lock = StageLock(tmp_path / "stage").acquire()
    with pytest.raises(LockError, match=f"being written by pid {os.getpid()} on {socket.gethostname()}"):
        StageLock(tmp_path / "stage").acquire()
    lock.release()
    assert not (tmp_path / "stage" / "lock.json").exists()

    record = {"pid": dead_pid(), "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00"}
    (tmp_path / "stage" / "lock.json").write_text(json.dumps(record))
    taken = StageLock(tmp_path / "stage").acquire()
    assert taken.took_over == record
    assert json.loads((tmp_path / "stage" / "lock.json").read_text())["pid"] == os.getpid()
    taken.release()

    elsewhere = {"pid": 1, "host": "another-host", "started": "2026-01-01T00:00:00+00:00"}
    (tmp_path / "stage" / "lock.json").write_text(json.dumps(elsewhere))
    with pytest.raises(LockError, match="another-host.*if that process is gone, delete"):
        StageLock(tmp_path / "stage").acquire()


def test_a_stage_whose_writer_died_is_taken_over_with_a_note(tiny_nerf_run):
    from typer.testing import CliRunner

    from prolificli.cli import app

    stage = tiny_nerf_run / "extract"
    stage.mkdir()
    gone = dead_pid()
    (stage / "lock.json").write_text(json.dumps({"pid": gone, "host": socket.gethostname(), "started": "then"}))
    result = CliRunner().invoke(app, ["extract", str(tiny_nerf_run), "--resolution", "16"])
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert f"took over the lock of pid {gone}" in " ".join(result.stderr.split())
    assert not (stage / "lock.json").exists()


# ---- prolific batch ---------------------------------------------------------------------------


def batch_args(model: Path, prompts: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["batch", str(prompts), "--recipe", TINY_RECIPE, "--model", str(model), "--device", "cpu", "--steps",
            str(steps), "--out", str(out), "--set", "nerf.checkpoint_every=5", *extra]


def test_a_batch_over_two_workers_runs_each_prompt_once_and_a_rerun_skips_them(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n\n# not a prompt\na blue sphere\na red cube\n")
    out = tmp_path / "runs"
    workers = [subprocess.Popen(plain(*batch_args(tiny_model_dir, prompts, out, 3)), cwd=REPO, text=True,
                                env={**ENV, "RANK": str(k), "WORLD_SIZE": "2"}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE) for k in range(2)]
    logs = [worker.communicate(timeout=300) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], [err[-2000:] for _, err in logs]
    runs = json.loads((out / "batch.json").read_text())["runs"]
    assert {name: (entry["prompt"], entry["worker"], entry["status"]) for name, entry in runs.items()} == {
        "a-red-cube": ("a red cube", 0, "complete"), "a-blue-sphere": ("a blue sphere", 1, "complete"),
        "a-red-cube-2": ("a red cube", 0, "complete")}
    for name in runs:  # each run was made once: one line per step in its metrics, one start
        steps = [json.loads(line)["step"] for line in (out / name / "nerf" / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3]
    assert logs[0][1].count("loading prior") == 1  # worker 0 ran two prompts on one loaded prior

    again = run(plain(*batch_args(tiny_model_dir, prompts, out, 3, "--json")))
    assert again.returncode == 0, again.stderr[-2000:]
    assert {name: entry["stages"] for name, entry in json.loads(again.stdout).items()} == \
        {name: {"nerf": "skipped"} for name in runs}


def test_a_batch_resumes_the_run_it_was_interrupted_in(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue sphere\n")
    out = tmp_path / "runs"
    process = start(plain(*batch_args(tiny_model_dir, prompts, out, 60)))
    wait_for_checkpoint(out / "a-red-cube")
    assert interrupt(process) == 130
    assert manifest(out / "a-red-cube")["status"] == "interrupted"
    result = run(plain(*batch_args(tiny_model_dir, prompts, out, 60, "--json")))
    assert result.returncode == 0, result.stderr[-2000:]
    entries = json.loads(result.stdout)
    assert entries["a-red-cube"]["stages"] == {"nerf": "resumed"} and entries["a-red-cube"]["status"] == "complete"
    assert entries["a-blue-sphere"]["stages"] == {"nerf": "complete"}
    assert manifest(out / "a-red-cube")["step"] == 60


def test_two_ranks_train_four_splat_particles_with_density_control(tiny_model_dir, tmp_path):
    """Gaussian-splat particles spread over two processes: each rank densifies its own; the
    checkpoint gathers four particles of different sizes."""
    out = tmp_path / "run"
    result = run(torchrun(2, "-m", "prolificli", *nerf_args(
        tiny_model_dir, out, 12, "--set", "scene.representation=gaussians", "--set", "gaussians.count=150",
        "--set", "gaussians.densify.start_step=4", "--set", "gaussians.densify.every=4",
        "--set", "gaussians.densify.grad_threshold=0.0", "--set", "gaussians.densify.max_gaussians=400"), "--json"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["status"] == "complete"
    tensors = load_checkpoint(out / "nerf" / "checkpoint").tensors
    counts = [tensors[f"particle{i}.gaussians.means"].shape[0] for i in range(4)]
    assert all(count > 150 for count in counts), counts  # every particle grew, on whichever rank held it
    assert {f"particle{i}.densify.grad_sum" for i in range(4)} <= set(tensors)
