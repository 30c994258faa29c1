"""Quality of the NeRF stage in the toy world, per method, measured against the ground truth.

    python benchmarks/toyworld.py                       # everything below (long: ~1 h on 2 CPU cores)
    python benchmarks/toyworld.py --only prior          # the prior and scorer gates
    python benchmarks/toyworld.py --only nerf --methods vsd --prompts "a red cube" "a blue torus"

Parts:
  prior    the scorer's accuracy on held-out renders; DDIM samples (CFG 7.5) of the prior for the
           36 full captions, and how many of them the scorer reads as their caption;
  nerf     `prolific nerf` with the toy recipe for each prompt and method: SDS at CFG 100,
           SDS at CFG 7.5, VSD at CFG 7.5; per run the scorer's prompt accuracy over 8 views,
           silhouette IoU and depth error against the true object from the same cameras, wall time;
  diverse  "a red object" with 4 VSD particles: how many distinct shapes the particles show.
Prints tables and writes benchmarks/results/toyworld.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import torch
from rich.console import Console
from prolificli.recipe_files import PACKAGE_RECIPES

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
RECIPE = str(PACKAGE_RECIPES / "toy.yaml")
METHODS = {"sds-cfg100": ["guidance.method=sds", "guidance.cfg_scale=100"],
           "sds-cfg7.5": ["guidance.method=sds", "guidance.cfg_scale=7.5"],
           "vsd-cfg7.5": ["guidance.method=vsd", "guidance.cfg_scale=7.5"]}
DEFAULT_PROMPTS = ["a red cube", "a blue sphere", "a green cylinder", "a yellow cone", "a purple torus",
                   "an orange pyramid"]


def prior_gate(samples_per_caption: int, seed: int) -> dict:
    from prolificli.config import PriorConfig
    from prolificli.prior import load_prior
    from prolificli.prior.sampling import sample_images
    from prolificli.toyworld.scorer import DEFAULT_DIR, load_scorer
    from prolificli.toyworld.shapes import all_objects

    prior = load_prior(PriorConfig(model="toy"))
    scorer = load_scorer()
    generator = torch.Generator().manual_seed(seed)
    correct, total, per_caption = 0, 0, {}
    for obj in all_objects():
        prompts = [f"{obj.caption}, {view}" for view in ("front view", "side view", "back view")]
        prompts = (prompts * samples_per_caption)[:samples_per_caption]
        images = sample_images(prior, prompts, steps=50, guidance_scale=7.5, generator=generator)
        ok = scorer.matches(images, obj.caption)
        per_caption[obj.caption] = ok.float().mean().item()
        correct += int(ok.sum())
        total += len(prompts)
    scorer_info = json.loads((DEFAULT_DIR / "config.json").read_text())
    return {"prior_sample_accuracy": correct / total, "samples": total, "per_caption": per_caption,
            "scorer_heldout_accuracy": scorer_info["accuracy"], "scorer_heldout_views": scorer_info["heldout_views"]}


def run_nerf(prompt: str, overrides: list[str], out: Path, console: Console) -> tuple[Path, float]:
    from prolificli.methods import build_recipe
    from prolificli.stages import nerf

    recipe = build_recipe(RECIPE, overrides)
    tic = time.perf_counter()
    nerf.run(out, recipe, prompt=prompt, console=console)
    return out, time.perf_counter() - tic


def evaluate_run(run_dir: Path, prompt: str) -> list:
    from prolificli.rundir.outputs import open_first_stage
    from prolificli.toyworld.measures import evaluate_particle
    from prolificli.toyworld.scorer import load_scorer

    nerf = open_first_stage(run_dir)
    scorer = load_scorer()
    return [evaluate_particle(field, background, nerf.recipe, prompt, scorer) for field, background in nerf.particles]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["prior", "nerf", "diverse"], action="append")
    parser.add_argument("--prompts", nargs="+", default=DEFAULT_PROMPTS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra recipe override")
    parser.add_argument("--samples-per-caption", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=RESULTS / "toyworld-runs")
    args = parser.parse_args()
    parts = args.only or ["prior", "nerf", "diverse"]
    console = Console(stderr=True)
    from prolificli.cli import quiet_libraries

    quiet_libraries()
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}}

    if "prior" in parts:
        gate = prior_gate(args.samples_per_caption, args.seed)
        results["prior"] = gate
        print(f"scorer accuracy on {gate['scorer_heldout_views']} held-out renders: {gate['scorer_heldout_accuracy']:.3f}")
        print(f"prior samples read as their caption: {gate['prior_sample_accuracy']:.3f} of {gate['samples']} "
              f"(DDIM 50 steps, CFG 7.5)")
        worst = sorted(gate["per_caption"].items(), key=lambda kv: kv[1])[:5]
        print("  weakest captions: " + ", ".join(f"{c} {a:.2f}" for c, a in worst))

    if "nerf" in parts:
        rows = []
        for method in args.methods:
            for prompt in args.prompts:
                out = args.runs / method / prompt.replace(" ", "-")
                shutil.rmtree(out, ignore_errors=True)
                _, seconds = run_nerf(prompt, METHODS[method] + args.overrides, out, console)
                report = evaluate_run(out, prompt)[0]
                rows.append({"method": method, "prompt": prompt, "seconds": round(seconds, 1),
                             "prompt_accuracy": report.prompt_accuracy, "silhouette_iou": report.silhouette_iou,
                             "depth_error": report.depth_error, "shape_votes": report.shape_votes})
                print(json.dumps(rows[-1]), flush=True)
        results["nerf"] = rows
        print(f"\n{'method':<11} | {'prompt':<18} | {'acc (8 views)':>13} | {'IoU':>5} | {'depth err':>9} | {'s':>6}")
        for r in rows:
            print(f"{r['method']:<11} | {r['prompt']:<18} | {r['prompt_accuracy']:>13.3f} | "
                  f"{r['silhouette_iou']:>5.3f} | {r['depth_error']:>9.4f} | {r['seconds']:>6.0f}")
        for method in args.methods:
            mine = [r for r in rows if r["method"] == method]
            passed = sum(r["prompt_accuracy"] >= 6 / 8 and r["silhouette_iou"] >= 0.7 for r in mine)
            print(f"{method}: {passed}/{len(mine)} prompts with >= 6/8 views correct and IoU >= 0.7")

    if "diverse" in parts:
        prompt = "a red object"
        out = args.runs / "diverse" / "a-red-object"
        shutil.rmtree(out, ignore_errors=True)
        _, seconds = run_nerf(prompt, ["guidance.method=vsd", "nerf.particles=4"] + args.overrides, out, console)
        reports = evaluate_run(out, prompt)
        shapes = [Counter(r.shape_votes).most_common(1)[0][0] for r in reports]
        results["diverse"] = {"prompt": prompt, "particles": len(reports), "shapes": shapes,
                              "distinct_shapes": len(set(shapes)), "prompt_accuracy": [r.prompt_accuracy for r in reports],
                              "seconds": round(seconds, 1)}
        print(f"'{prompt}', 4 VSD particles: shapes {shapes} -> {len(set(shapes))} distinct "
              f"({seconds:.0f} s)")

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"toyworld-{'-'.join(parts)}.json"  # one file per part set: partial runs do not clobber
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
