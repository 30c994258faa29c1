"""Particle updates per second with 1 and 2 processes (torch.distributed, gloo on the CPU).

The toy recipe's NeRF stage with 4 particles for 200 steps, launched by torchrun with
--nproc_per_node 1 and 2. Each step every process updates one of its particles, so particle
updates per second = processes x steps / loop seconds. The collectives a distributed step adds
(the score model's gradient all-reduce before each of its optimiser steps, and the one-flag
all-reduce that lets every rank stop after the same step) are timed inside the workers; their
time includes waiting for the slower rank to reach them, so it bounds the cost from above. On a
2-core machine the two processes share the cores, so expect little speed-up: what this shows is
that the run completes and what the collectives cost.

    python benchmarks/scaling.py                      # 4 particles, 200 steps, 1 and 2 processes
    python benchmarks/scaling.py --steps 50 --processes 1 2

Prints a table and writes benchmarks/results/scaling.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


def worker(out: Path, particles: int, steps: int) -> None:
    """One torchrun worker: the NeRF stage, with the collectives timed."""
    from prolificli import distributed
    from prolificli.methods import build_recipe
    from prolificli.stages import nerf

    spent = {"gradient_all_reduce_s": 0.0, "gradient_all_reduces": 0, "stop_flag_s": 0.0, "stop_flags": 0}

    def timed(method, seconds_key: str, count_key: str):
        def run(self, *args, **kwargs):
            tic = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                spent[seconds_key] += time.perf_counter() - tic
                spent[count_key] += 1
        return run

    World = distributed.World
    World.average_gradients = timed(World.average_gradients, "gradient_all_reduce_s", "gradient_all_reduces")
    World.agree = timed(World.agree, "stop_flag_s", "stop_flags")
    world = distributed.join()
    recipe = build_recipe("toy", [f"nerf.particles={particles}", f"nerf.steps={steps}", "prior.device=cpu",
                                  f"nerf.checkpoint_every={steps}", f"nerf.preview_every={steps}"])
    result = nerf.run(out / "run", recipe, prompt="a red cube", world=world)
    (out / f"rank{world.rank}.json").write_text(json.dumps({**spent, "seconds": result.seconds}))
    distributed.leave(world)


def launch(processes: int, particles: int, steps: int, folder: Path) -> dict:
    env = {**os.environ, "PROLIFIC_DIST_BACKEND": "gloo", "OMP_NUM_THREADS": str(max(1, os.cpu_count() // processes)),
           "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           __file__, "--worker", str(folder), "--particles", str(particles), "--steps", str(steps)]
    tic = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - tic
    if done.returncode != 0:
        return {"processes": processes, "error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    ranks = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(processes)]
    manifest = json.loads((folder / "run" / "nerf" / "manifest.json").read_text())
    loop = float(manifest["timings"]["seconds"])
    return {
        "processes": processes, "particles": particles, "steps": steps, "status": manifest["status"],
        "loop_seconds": round(loop, 2), "wall_seconds": round(wall, 2),
        "particle_updates_per_s": round(processes * steps / loop, 3),
        "gradient_all_reduce_ms_per_step": round(1000 * max(r["gradient_all_reduce_s"] for r in ranks) / steps, 3),
        "stop_flag_ms_per_step": round(1000 * max(r["stop_flag_s"] for r in ranks) / steps, 3),
        "checkpoint_particles": sum(1 for _ in {k.split(".")[0] for k in _checkpoint_keys(folder)
                                                if k.startswith("particle")}),
    }


def _checkpoint_keys(folder: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "run" / "nerf" / "checkpoint" / "weights.safetensors"), "pt") as f:
        return list(f.keys())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--particles", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS / "scaling.json")
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.particles, args.steps)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.processes:  # one launch at a time: the machine is shared
            rows.append(launch(n, args.particles, args.steps, Path(tmp) / f"p{n}"))
            print(f"  {n} process(es): done", file=sys.stderr)
    base = next((r for r in rows if r.get("processes") == 1 and "error" not in r), None)
    print(f"{'processes':>9} | {'loop s':>7} | {'updates/s':>9} | {'speed-up':>8} | {'grad all-reduce+wait ms/step':>28} "
          f"| {'stop flag ms/step':>17} | particles in checkpoint")
    for r in rows:
        if "error" in r:
            print(f"{r['processes']:>9} | failed: {r['error']}")
            continue
        speedup = r["particle_updates_per_s"] / base["particle_updates_per_s"] if base else float("nan")
        r["speedup"] = round(speedup, 3)
        print(f"{r['processes']:>9} | {r['loop_seconds']:>7.1f} | {r['particle_updates_per_s']:>9.2f} | "
              f"{speedup:>7.2f}x | {r['gradient_all_reduce_ms_per_step']:>28.2f} | {r['stop_flag_ms_per_step']:>17.2f} "
              f"| {r['checkpoint_particles']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                                    "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
