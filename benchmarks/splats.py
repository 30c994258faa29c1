"""Gaussian-splat particles against NeRF particles in the toy world (issue 28's measurements).

    python benchmarks/splats.py --part toy                       # 6 shapes x seeds 0-2, toy vs toy-gaussians
    python benchmarks/splats.py --part toy --prompts "a green cube" --seeds 100 --set gaussians.count=2000
    python benchmarks/splats.py --part diverse                   # 4 splat particles on the multi-object prompts
    python benchmarks/splats.py --merge benchmarks/results/splats-toy-*.json   # later files' runs replace earlier ones'

toy:     `prolific nerf`'s loop with the toy recipe (NeRF) and toy-gaussians (splats), VSD at CFG 7.5,
         one particle. Every --eval-every steps: the scorer's prompt accuracy over 8 views and the
         silhouette IoU against the true object; at the end also FID (60 views against 60 DDIM
         samples of the prior for the same view prompts), wall time and seconds per step. Then per
         seed: the steps and seconds each representation needs to reach the NeRF's final IoU.
diverse: 4 particles, 500 updates each (2000 steps), on "a red object", "an object", "a sphere";
         distinct (shape, colour) readings per prompt, as benchmarks/methods.py counts them for
         the NeRF (2.89 [2.67, 3.00] there).
Evaluation steps are not timed. Prints tables and writes benchmarks/results/splats-<part>-<seeds>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from methods import train  # noqa: E402  (the same loop benchmarks/methods.py times)

from prolificli.recipe_files import PACKAGE_RECIPES  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RECIPES = {"nerf": str(PACKAGE_RECIPES / "toy.yaml"), "gaussians": str(PACKAGE_RECIPES / "toy-gaussians.yaml")}
SHAPES = ["a red cube", "a blue sphere", "a green cylinder", "a yellow cone", "a purple torus", "an orange pyramid"]
MULTI = ["a red object", "an object", "a sphere"]


def particles_of(problem):
    if hasattr(problem, "clouds"):
        return list(zip(problem.clouds, problem.backgrounds))
    return list(zip(problem.fields, problem.backgrounds))


def render_views(particle, recipe, cameras, size):
    from prolificli.render.volume import render

    field, background = particle
    with torch.no_grad():
        if hasattr(field, "render"):
            out = field.render(background, cameras, size, recipe.gaussians.render)
        else:
            out = render(field, background, cameras, size, size, recipe.nerf.render, stratified=False)
    return out.rgb.permute(0, 3, 1, 2).clamp(0, 1).cpu()


def run_one(representation, prompt, seed, overrides, eval_every, scorer, console, particles=1, steps=None):
    from prolificli.methods import build_recipe
    from prolificli.toyworld.measures import evaluate_particle

    sets = [f"seed={seed}", f"nerf.particles={particles}", *([f"nerf.steps={steps}"] if steps else [])]
    recipe = build_recipe(RECIPES[representation], sets + (overrides if representation == "gaussians" else []))

    def snapshot(problem):
        return [evaluate_particle(f, b, recipe, prompt, scorer) for f, b in particles_of(problem)]

    snaps, seconds, problem = train(recipe, prompt, eval_every, snapshot, console)
    return recipe, snaps, seconds, problem


def part_toy(prompts, seeds, overrides, eval_every, console, representations=("nerf", "gaussians"),
             fid_views: int = 60) -> list[dict]:
    from prolificli.cameras import orbit_cameras, view_prompts
    from prolificli.evaluation.fid import InceptionFeatures, frechet_distance, prior_samples
    from prolificli.methods import build_recipe
    from prolificli.prior import load_prior
    from prolificli.toyworld.scorer import load_scorer

    scorer, inception = load_scorer(), InceptionFeatures()
    base = build_recipe(RECIPES["nerf"])
    cameras = orbit_cameras(fid_views, 30.0, base.camera.eval_distance, base.camera.eval_fovy_deg)
    prior = load_prior(base.prior)
    rows = []
    for seed in seeds:
        for prompt in prompts:
            reference = inception(prior_samples(prior, base.prior.model, view_prompts(prompt, cameras, base.camera),
                                                seed=seed))
            for representation in representations:
                recipe, snaps, seconds, problem = run_one(representation, prompt, seed, overrides, eval_every,
                                                          scorer, console)
                final = snaps[max(snaps)][0]
                views = render_views(particles_of(problem)[0], recipe, cameras, prior.image_size)
                elapsed = {step: sum(seconds[:step]) for step in snaps}
                row = {"representation": representation, "prompt": prompt, "seed": seed,
                       "prompt_accuracy": final.prompt_accuracy, "silhouette_iou": final.silhouette_iou,
                       "fid": frechet_distance(inception(views), reference),
                       "seconds": sum(seconds), "s_per_step": statistics.median(seconds),
                       "iou_curve": {step: s[0].silhouette_iou for step, s in snaps.items()},
                       "accuracy_curve": {step: s[0].prompt_accuracy for step, s in snaps.items()},
                       "seconds_at": elapsed,
                       "gaussians": problem.clouds[0].count if hasattr(problem, "clouds") else None}
                rows.append(row)
                console.print(json.dumps({k: v for k, v in row.items() if not k.endswith(("curve", "_at"))}),
                              highlight=False)
    return rows


def reach(rows: list[dict]) -> list[dict]:
    """Per (prompt, seed) and representation: the first evaluated step (and its seconds) at which
    the silhouette IoU is at least the NeRF's final IoU."""
    out = []
    for row in rows:
        target = next(r for r in rows if r["representation"] == "nerf" and r["prompt"] == row["prompt"]
                      and r["seed"] == row["seed"])["silhouette_iou"]
        hits = [int(step) for step, iou in row["iou_curve"].items() if iou >= target]
        step = min(hits) if hits else None
        out.append({**{k: row[k] for k in ("representation", "prompt", "seed")}, "target": target, "step": step,
                    "seconds": row["seconds_at"][step if step in row["seconds_at"] else str(step)] if hits else None})
    return out


def print_toy(rows: list[dict]) -> None:
    """Every run; then per shape and representation the mean over the seeds (a markdown table);
    then the issue's criteria: mean IoU, and the time to reach the NeRF's final IoU against half
    the NeRF stage's wall time."""
    mean = statistics.mean
    reached = reach(rows)
    print(f"\n{'representation':<10} | {'prompt':<18} | {'acc':>5} | {'IoU':>5} | {'FID':>6} | {'s':>6} | "
          f"{'s/step':>6} | reach NeRF IoU (step, s)")
    for row, hit in zip(rows, reached):
        where = f"{hit['step']}, {hit['seconds']:.0f}" if hit["step"] else "never"
        print(f"{row['representation']:<10} | {row['prompt']:<18} | {row['prompt_accuracy']:>5.2f} | "
              f"{row['silhouette_iou']:>5.3f} | {row['fid']:>6.1f} | {row['seconds']:>6.0f} | "
              f"{row['s_per_step']:>6.3f} | {where} (seed {row['seed']})")
    seeds = sorted({r["seed"] for r in rows})
    print(f"\nmean over seeds {seeds}:\n")
    print("| representation | prompt | accuracy | silhouette IoU | FID | wall s | s/step | reaches the NeRF's final IoU "
          "(runs; mean step, mean s) |\n|---|---|---|---|---|---|---|---|")
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))
    for prompt in prompts:
        for representation in ("nerf", "gaussians"):
            mine = [r for r in rows if r["representation"] == representation and r["prompt"] == prompt]
            hits = [h for h in reached if h["representation"] == representation and h["prompt"] == prompt
                    and h["step"] is not None]
            where = f"{len(hits)}/{len(mine)}" + (f"; {mean(h['step'] for h in hits):.0f}, "
                                                  f"{mean(h['seconds'] for h in hits):.0f} s" if hits else "")
            print(f"| {'NeRF' if representation == 'nerf' else 'splats'} | {prompt} | "
                  f"{mean(r['prompt_accuracy'] for r in mine):.2f} | {mean(r['silhouette_iou'] for r in mine):.3f} | "
                  f"{mean(r['fid'] for r in mine):.1f} | {mean(r['seconds'] for r in mine):.0f} | "
                  f"{mean(r['s_per_step'] for r in mine):.3f} | {where} |")
    print()
    for representation in ("nerf", "gaussians"):
        mine = [r for r in rows if r["representation"] == representation]
        gate = sum(r["prompt_accuracy"] >= 6 / 8 and r["silhouette_iou"] >= 0.7 for r in mine)
        hits = [h for h in reached if h["representation"] == representation]
        times = [h["seconds"] for h in hits if h["seconds"] is not None]
        per_seed = [mean(r["silhouette_iou"] for r in mine if r["seed"] == seed) for seed in seeds]
        print(f"{representation}: gate {gate}/{len(mine)}; mean accuracy {mean(r['prompt_accuracy'] for r in mine):.3f}, "
              f"IoU {mean(r['silhouette_iou'] for r in mine):.3f} (per seed {', '.join(f'{v:.3f}' for v in per_seed)}), "
              f"FID {mean(r['fid'] for r in mine):.1f}, wall {mean(r['seconds'] for r in mine):.0f} s, "
              f"{mean(r['s_per_step'] for r in mine):.3f} s/step; reaches the NeRF's final IoU in "
              f"{len(times)}/{len(hits)} runs" + (f", mean {mean(times):.0f} s" if times else ""))
    nerf_wall = mean(r["seconds"] for r in rows if r["representation"] == "nerf")
    print(f"half the NeRF stage's mean wall time: {nerf_wall / 2:.0f} s")


def part_diverse(seeds, overrides, console, prompts=MULTI) -> list[dict]:
    from prolificli.toyworld.scorer import load_scorer

    scorer, rows = load_scorer(), []
    for seed in seeds:
        per_prompt = {}
        for prompt in prompts:
            _, snaps, seconds, _ = run_one("gaussians", prompt, seed, overrides, 10**9, scorer, console,
                                           particles=4, steps=2000)
            reports = snaps[max(snaps)]
            per_prompt[prompt] = {"readings": [list(r.reading) for r in reports],
                                  "distinct": len({r.reading for r in reports}),
                                  "accuracy": statistics.mean(r.prompt_accuracy for r in reports),
                                  "seconds": sum(seconds)}
        row = {"seed": seed, "per_prompt": per_prompt,
               "distinct": statistics.mean(p["distinct"] for p in per_prompt.values())}
        rows.append(row)
        console.print(json.dumps(row), highlight=False)
    print_diverse(rows)
    return rows


def print_diverse(rows: list[dict]) -> None:
    # one row per seed, its prompts gathered from the runs that split them
    by_seed: dict[int, dict] = {}
    for row in rows:
        by_seed.setdefault(row["seed"], {}).update(row["per_prompt"])
    rows = [{"seed": seed, "per_prompt": per_prompt,
             "distinct": statistics.mean(p["distinct"] for p in per_prompt.values())}
            for seed, per_prompt in sorted(by_seed.items())]
    prompts = list(dict.fromkeys(p for r in rows for p in r["per_prompt"]))  # MULTI or --prompts, in run order
    print(f"\n{'seed':>4} | " + " | ".join(f"{p:<14}" for p in prompts) + " | distinct per prompt")
    for row in rows:
        print(f"{row['seed']:>4} | " + " | ".join(f"{row['per_prompt'].get(p, {}).get('distinct', '-'):<14}"
                                                  for p in prompts) + f" | {row['distinct']:.2f}")
    values = [r["distinct"] for r in rows]
    per_prompt = {p: statistics.mean(r["per_prompt"][p]["distinct"] for r in rows if p in r["per_prompt"])
                  for p in prompts}
    accuracy = statistics.mean(v["accuracy"] for r in rows for v in r["per_prompt"].values())
    print(f"splats, 4 particles: distinct readings per prompt {statistics.mean(values):.2f} "
          f"[{min(values):.2f}, {max(values):.2f}] over seeds {[r['seed'] for r in rows]} (NeRF: 2.89 [2.67, 3.00]); "
          + ", ".join(f"'{p}' {v:.2f}" for p, v in per_prompt.items()) + f"; prompt accuracy {accuracy:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["toy", "diverse"], default="toy")
    parser.add_argument("--prompts", nargs="+", help="default: the 6 shapes (toy), the multi-object prompts (diverse)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override of the splat recipe (held-out tuning)")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--representations", nargs="+", choices=["nerf", "gaussians"], default=["nerf", "gaussians"])
    parser.add_argument("--tag", default="", help="appended to the result file's name (runs side by side)")
    parser.add_argument("--merge", nargs="+", type=Path, help="print the tables of these result files together")
    args = parser.parse_args()
    if args.merge:
        rows = [row for path in args.merge for row in json.loads(path.read_text())["rows"]]
        if "per_prompt" in rows[0]:
            print_diverse(rows)  # a later file's prompts replace an earlier one's for the same seed
        else:  # a later file's run replaces an earlier one's for the same representation, prompt and seed
            print_toy(list({(r["representation"], r["prompt"], r["seed"]): r for r in rows}.values()))
        return
    console = Console(stderr=True)
    from prolificli.cli import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tic = time.perf_counter()
    if args.part == "toy":
        rows = part_toy(args.prompts or SHAPES, args.seeds, args.overrides, args.eval_every, console,
                        args.representations)
        if set(args.representations) == {"nerf", "gaussians"}:
            print_toy(rows)
    else:
        rows = part_diverse(args.seeds, args.overrides, console, args.prompts or MULTI)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"splats-{args.part}-{'-'.join(map(str, args.seeds))}{'-' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                               "seconds": time.perf_counter() - tic}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
