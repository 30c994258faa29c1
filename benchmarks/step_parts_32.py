"""Per-part seconds of one toy VSD step at 32 px: NeRF (toy) against splats (toy-gaussians), one thread.

    python benchmarks/step_parts_32.py

Median of steps 60-260 of "a red cube" (seed 5) of each recipe, parts from optimization_step's
timer (render, distill, backward, step). Prints them and writes results/step_parts_32.json.
"""
import contextlib
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from splats import RECIPES  # noqa: E402
from prolificli.methods import build_distiller, build_recipe  # noqa: E402
from prolificli.optimize import optimization_step  # noqa: E402
from prolificli.prior import load_prior  # noqa: E402
from prolificli.stages.nerf import make_problem  # noqa: E402



def step_parts(representation: str) -> dict[str, float]:
    recipe = build_recipe(RECIPES[representation], ["seed=5"])
    torch.manual_seed(5)
    generator = torch.Generator().manual_seed(5)
    prior = load_prior(recipe.prior)
    problem = make_problem(recipe, prior, "a red cube", generator)
    distiller = build_distiller(recipe.guidance, recipe, prior)
    parts, current = defaultdict(list), {}

    @contextlib.contextmanager
    def timer(name):
        tic = time.perf_counter()
        yield
        current[name] = current.get(name, 0.0) + time.perf_counter() - tic

    for step in range(260):
        current.clear()
        tic = time.perf_counter()
        optimization_step(problem, prior.encode_images, distiller, step, generator, timer=timer)
        if step >= 60:  # past the splats' first densifications
            parts["total"].append(time.perf_counter() - tic)
            for name, seconds in current.items():
                parts[name].append(seconds)
    return {name: statistics.median(values) for name, values in parts.items()}


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = {}
    for representation in ("nerf", "gaussians"):
        out[representation] = step_parts(representation)
        print(representation, {k: round(v, 4) for k, v in out[representation].items()}, flush=True)
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / "step_parts_32.json").write_text(json.dumps(out, indent=1))
