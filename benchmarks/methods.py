"""The distillation methods side by side in the toy world: SDS, VSD, L-VSD, L2-VSD, ESD.

    python benchmarks/methods.py --parts 2d                     # 4 and 8 particles, 3 seeds (~3 h on 2 CPU cores)
    python benchmarks/methods.py --parts 2d --methods sds vsd --particles-2d 4 --seeds 0
    python benchmarks/methods.py --parts nerf --methods sds-cfg100 vsd        # 4 particles, both prompt sets
    python benchmarks/methods.py --parts nerf --methods vsd l2vsd l2vsd-last --prompts "a red cube" \
        --particles-nerf 1 --updates-nerf 100                   # per-step times alone: run it on an idle machine
    python benchmarks/methods.py --merge A.json B.json=l-vsd,l2vsd  # one table from several invocations

Methods: sds, sds-cfg100, vsd, l-vsd, l2vsd (lookahead.eta 0.01), l2vsd-eta1 (eta 1), esd by default;
on request l2vsd-last (the last LoRA layer only) and vsd-attention, vsd-attention+resnet (VSD with
that score_model.lora_targets, whatever the recipe says).

Parts:
  2d    the toy-2d recipe: each particle is a 32 px image, rendered by the identity; --updates-2d
        updates per particle (so 8 particles take twice the steps of 4), for each of --seeds.
        Every --eval-every steps the particles are kept. At the end: the scorer's prompt accuracy,
        how many distinct (shape, colour) readings a prompt's particles show, the FID of all
        prompts' particles pooled against 40 ancestral samples of the prior per prompt (CFG 7.5,
        one set for every seed), and how clean the particles are: the share of white background
        and the local speckle (toyworld/measures.py). The floor is a second set of ancestral
        samples, one per particle. Then each measure's mean and [min, max] over the seeds.
        ESD is left out here: with no camera its mixed score is VSD's.
  nerf  the toy recipe, --particles-nerf NeRFs per prompt, --updates-nerf updates each, for each
        of --seeds; two prompt sets, each its own table: the multi-object prompts (diversity) and full
        captions, one true object each (quality). Every --eval-every steps, per particle: prompt
        accuracy over 8 views, silhouette IoU and depth error against the true object (prompts
        that name a shape), and the (shape, colour) the scorer reads in most views; "distinct" counts a
        prompt's different readings. At the end the FID of 30 views per particle at 30 deg
        elevation, pooled over prompts, against DDIM samples of the prior for the same view
        prompts (ProlificDreamer's 3D-FID), drawn with the run's seed. Then the mean and spread
        over the seeds, and each prompt's distinct readings averaged over them.
Every method but sds-cfg100 runs at the recipes' CFG 7.5. Per method: final metrics, seconds per
step (median over the run; the optimisation step alone), and the steps it took to reach VSD's
final quality (2D: pooled FID <= VSD's final FID of the same seed; NeRF: mean IoU >= VSD's final
mean IoU), "-" if it never did. The runs use the stage's own parts (problem, distiller,
`optimization_step`) without its bookkeeping, so that they can be measured mid-run.
Prints tables and writes benchmarks/results/methods-<parts>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from prolificli.recipe_files import PACKAGE_RECIPES

from method_tables import TABLE_2D, TABLE_NERF, merge, print_table, summarize_2d, summarize_nerf

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
RECIPES = {"2d": str(PACKAGE_RECIPES / "toy-2d.yaml"), "nerf": str(PACKAGE_RECIPES / "toy.yaml")}
# name -> recipe overrides; L2-VSD at the default eta = 0.01 and at eta = 1, the ends of the paper's
# ablation range that matter here (its linear term is ~0.1% of the gradient at 0.01 in this world)
METHODS = {"sds": ["guidance.method=sds"], "sds-cfg100": ["guidance.method=sds", "guidance.cfg_scale=100"],
           "vsd-attention": ["guidance.method=vsd", "score_model.lora_targets=attention"],
           "vsd-attention+resnet": ["guidance.method=vsd", "score_model.lora_targets=attention+resnet"],
           "vsd": ["guidance.method=vsd"], "l-vsd": ["guidance.method=l-vsd"],
           "l2vsd": ["guidance.method=l2vsd"], "l2vsd-eta1": ["guidance.method=l2vsd", "lookahead.eta=1"],
           "l2vsd-last": ["guidance.method=l2vsd", "lookahead.last_layer_only=true"],
           "esd": ["guidance.method=esd"]}
DEFAULT_METHODS = ["sds", "sds-cfg100", "vsd", "l-vsd", "l2vsd", "l2vsd-eta1", "esd"]
REFERENCE_SEED = 12345  # the 2D reference samples' generator; no run's seed
# 2D: prompts that admit several objects, so that diversity shows in the distinct readings
PROMPTS = {"2d": ["a red object", "an object", "a sphere"]}
# NeRF: the same prompts for diversity, and full captions (one true object each) for quality
NERF_PROMPTS = {"multi-object": PROMPTS["2d"], "captions": ["a red cube", "a purple torus", "an orange pyramid"]}


def train(recipe, prompt: str, eval_every: int, snapshot, console: Console,
          adjust=None) -> tuple[dict, list[float], object]:
    """Run the stage's optimisation for recipe.nerf.steps; `snapshot(problem)` every eval_every
    steps. `adjust(problem, distiller, prior)`, if given, may change the problem in place and
    returns the distiller to use (benchmarks/held_out_2d.py's diagnostics). Returns the
    snapshots by step, each step's seconds, and the trained problem."""
    from prolificli.optimize import optimization_step
    from prolificli.prior import load_prior
    from prolificli.methods import build_distiller
    from prolificli.stages.nerf import make_problem

    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    prior = load_prior(recipe.prior)  # one per run: a second score model on one prior is an error
    problem = make_problem(recipe, prior, prompt, generator)
    distiller = build_distiller(recipe.guidance, recipe, prior)
    if adjust is not None:
        distiller = adjust(problem, distiller, prior)
    snapshots, seconds = {}, []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"{recipe.scene.representation} {recipe.guidance.method} '{prompt}'",
                                 total=recipe.nerf.steps)
        for step in range(recipe.nerf.steps):
            tic = time.perf_counter()
            logs = optimization_step(problem, prior.encode_images, distiller, step, generator)
            seconds.append(time.perf_counter() - tic)
            if not math.isfinite(logs["loss"]):
                raise RuntimeError(f"{recipe.guidance.method} '{prompt}': loss {logs['loss']} at step {step + 1}")
            if (step + 1) % eval_every == 0 or step + 1 == recipe.nerf.steps:
                snapshots[step + 1] = snapshot(problem)
            progress.advance(task)
    return snapshots, seconds, problem


def part_2d(methods, prompts, steps, particles, eval_every, seeds, console) -> list[dict]:
    """One row per (method, seed), then one per method with the mean and spread over seeds."""
    from prolificli.methods import build_recipe
    from prolificli.evaluation.fid import InceptionFeatures, frechet_distance
    from prolificli.prior import load_prior
    from prolificli.prior.sampling import sample_images
    from prolificli.toyworld.measures import speckle, white_fraction
    from prolificli.toyworld.scorer import load_scorer

    scorer, inception = load_scorer(), InceptionFeatures()
    prior = load_prior(build_recipe(RECIPES["2d"]).prior)
    # the reference is one set for all seeds, drawn from a generator no run uses
    generator = torch.Generator().manual_seed(REFERENCE_SEED)
    with console.status("ancestral samples of the prior (the reference)"):
        reference = torch.cat([sample_images(prior, [p] * 40, steps=100, guidance_scale=7.5, eta=1.0,
                                             generator=generator) for p in prompts])
    reference_features = inception(reference)

    def readings(images):
        shapes, colours = scorer.classify(images)
        return len(set(zip(shapes, colours)))

    def measure(images_by_prompt: dict) -> dict:
        pooled = torch.cat(list(images_by_prompt.values()))
        mean = statistics.mean
        return {"prompt_accuracy": mean(float(scorer.matches(x, p).float().mean()) for p, x in images_by_prompt.items()),
                "distinct": mean(readings(x) for x in images_by_prompt.values()),
                "fid": frechet_distance(inception(pooled), reference_features),
                "white": white_fraction(pooled), "speckle": speckle(pooled)}

    rows = []
    for seed in seeds:
        # the floor: a second, independent set of ancestral samples, as many per prompt as there are particles
        generator = torch.Generator().manual_seed(seed)
        with console.status(f"ancestral samples of the prior (the floor, seed {seed})"):
            floor = {p: sample_images(prior, [p] * particles, steps=100, guidance_scale=7.5, eta=1.0,
                                      generator=generator) for p in prompts}
        rows.append({"method": "ancestral", "seed": seed, **measure(floor)})
        save_grid(floor, RESULTS / "methods-2d" / f"ancestral-p{particles}-s{seed}.png")
        for method in [m for m in methods if m != "esd"]:
            snapshots, seconds = {}, []
            for prompt in prompts:
                recipe = build_recipe(RECIPES["2d"], METHODS[method] + [
                    f"nerf.steps={steps}", f"nerf.particles={particles}", f"seed={seed}"])
                snapshots[prompt], secs, _ = train(recipe, prompt, eval_every, lambda problem: problem.rgb().cpu(),
                                                   console)
                seconds += secs
            curve = {step: frechet_distance(inception(torch.cat([snapshots[p][step] for p in prompts])),
                                            reference_features) for step in snapshots[prompts[0]]}
            final = {p: snapshots[p][steps] for p in prompts}
            row = {"method": method, "seed": seed, **measure(final), "fid_curve": curve,
                   "s_per_step": statistics.median(seconds)}
            rows.append(row)
            console.print(json.dumps({k: v for k, v in row.items() if k != "fid_curve"}), highlight=False)
            save_grid(final, RESULTS / "methods-2d" / f"{method}-p{particles}-s{seed}.png")
    return summarize_2d(rows)


def save_grid(images_by_prompt: dict, path: Path) -> None:
    """One row of particles per prompt, as a PNG (for looking at, not measured)."""
    from PIL import Image

    from prolificli.files import to_uint8

    rows = [torch.cat(list(images.permute(0, 2, 3, 1)), dim=1) for images in images_by_prompt.values()]
    grid = to_uint8(torch.cat(rows, dim=0)[None])[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)


def part_nerf(methods, prompts, updates, particles, eval_every, seeds, console) -> list[dict]:
    """One row per (method, seed): `particles` NeRFs per prompt, each `updates` updates (a random
    particle moves each step, so a run takes about updates x particles steps); then one per
    method with the mean and spread over seeds."""
    from prolificli.cameras import orbit_cameras, view_prompts
    from prolificli.methods import build_recipe
    from prolificli.evaluation.fid import InceptionFeatures, frechet_distance, prior_samples
    from prolificli.prior import load_prior
    from prolificli.render.volume import render
    from prolificli.toyworld.measures import evaluate_particle
    from prolificli.toyworld.scorer import load_scorer

    scorer, inception = load_scorer(), InceptionFeatures()
    base = build_recipe(RECIPES["nerf"])
    cam = base.camera
    fid_cameras = orbit_cameras(30, 30.0, cam.eval_distance, cam.eval_fovy_deg)
    prior = load_prior(base.prior)
    mean = statistics.mean

    def mean_of(values):
        values = [v for v in values if v is not None]
        return mean(values) if values else None

    rows, steps = [], updates * particles
    for seed in seeds:
        with console.status(f"DDIM samples of the prior for the FID views (seed {seed})"):
            samples = torch.cat([prior_samples(prior, base.prior.model, view_prompts(p, fid_cameras, cam), seed=seed)
                                 for p in prompts])
        reference_features = inception(samples)
        for method in methods:
            reports, seconds, fid_views = {}, [], []
            for prompt in prompts:
                recipe = build_recipe(RECIPES["nerf"], METHODS[method] + [
                    f"nerf.steps={steps}", f"nerf.particles={particles}", f"seed={seed}"])

                def snapshot(problem, recipe=recipe, prompt=prompt):
                    return [evaluate_particle(field, background, recipe, prompt, scorer)
                            for field, background in zip(problem.fields, problem.backgrounds)]

                snaps, secs, problem = train(recipe, prompt, eval_every, snapshot, console)
                reports[prompt], seconds = snaps, seconds + secs
                with torch.no_grad():
                    for field, background in zip(problem.fields, problem.backgrounds):
                        out = render(field, background, fid_cameras, prior.image_size, prior.image_size,
                                     recipe.nerf.render, stratified=False)
                        fid_views.append(out.rgb.permute(0, 3, 1, 2).clamp(0, 1).cpu())
            curve = {step: mean_of(r.silhouette_iou for p in prompts for r in reports[p][step])
                     for step in reports[prompts[0]]}
            final = {p: reports[p][steps] for p in prompts}
            row = {"method": method, "seed": seed,
                   "prompt_accuracy": mean(r.prompt_accuracy for rs in final.values() for r in rs),
                   "distinct": mean(len({r.reading for r in rs}) for rs in final.values()),
                   "silhouette_iou": curve[steps],
                   "depth_error": mean_of(r.depth_error for rs in final.values() for r in rs),
                   "fid": frechet_distance(inception(torch.cat(fid_views)), reference_features),
                   "iou_curve": curve, "per_prompt": {p: [{"accuracy": r.prompt_accuracy, "iou": r.silhouette_iou,
                                                           "reading": r.reading} for r in rs]
                                                      for p, rs in final.items()},
                   "s_per_step": statistics.median(seconds)}
            rows.append(row)
            console.print(json.dumps({k: v for k, v in row.items() if k != "iou_curve"}), highlight=False)
    return summarize_nerf(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=["2d", "nerf"], default=["2d", "nerf"])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=DEFAULT_METHODS)
    parser.add_argument("--prompts", nargs="+", help="default: per part, see PROMPTS")
    parser.add_argument("--updates-2d", type=int, default=125,
                        help="2D: updates per particle; a run takes this times the particle count in steps")
    parser.add_argument("--particles-2d", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--updates-nerf", type=int, default=1000,
                        help="NeRF: updates per particle (the toy recipe's steps for one particle)")
    parser.add_argument("--particles-nerf", type=int, default=4)
    parser.add_argument("--nerf-prompts", nargs="+", choices=list(NERF_PROMPTS), default=list(NERF_PROMPTS),
                        help="NeRF: which prompt sets, each its own table (--prompts replaces them)")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="one run per seed, then mean and spread")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/methods-<parts>.json")
    parser.add_argument("--merge", nargs="+", metavar="JSON[=METHOD,...]",
                        help="run nothing: print the tables of these results files (those methods' rows) "
                             "as one per part and particle count or prompt set, and write --out")
    args = parser.parse_args()
    console = Console(stderr=True)
    from prolificli.cli import quiet_libraries

    quiet_libraries()
    results: dict = {"args": vars(args)}
    tables = []
    if args.merge:
        results.update(merge(args.merge))
        args.parts = ["merged"]
        for particles, rows in results["2d"].items():
            tables.append((f"2D mode: {particles} image particles per prompt, merged from {len(args.merge)} files",
                           rows, TABLE_2D))
        for name, rows in results["nerf"].items():
            tables.append((f"NeRF stage, {name} prompts, merged from {len(args.merge)} files", rows, TABLE_NERF))
    elif "2d" in args.parts:
        results["2d"] = {}
        for particles in args.particles_2d:
            steps = args.updates_2d * particles
            rows = part_2d(args.methods, args.prompts or PROMPTS["2d"], steps, particles, args.eval_every,
                           args.seeds, console)
            results["2d"][particles] = rows
            tables.append((f"2D mode: {particles} image particles per prompt, {steps} steps, seeds "
                           f"{args.seeds}; FID pooled over prompts against 40 ancestral samples per prompt", rows,
                           TABLE_2D))
    if "nerf" in args.parts and not args.merge:
        results["nerf"] = {}
        prompt_sets = {"given": args.prompts} if args.prompts else {k: NERF_PROMPTS[k] for k in args.nerf_prompts}
        for name, prompts in prompt_sets.items():
            rows = part_nerf(args.methods, prompts, args.updates_nerf, args.particles_nerf, args.eval_every,
                             args.seeds, console)
            results["nerf"][name] = rows
            tables.append((f"NeRF stage, {name} prompts {prompts}: the toy recipe, {args.particles_nerf} particles "
                           f"per prompt, {args.updates_nerf} updates each, seeds {args.seeds}", rows, TABLE_NERF))
    for title, rows, columns in tables:
        print_table(title, rows, columns)
        step_times = {r["method"]: r["s_per_step"] for r in rows if "s_per_step" in r}
        for variant in ("l2vsd", "l2vsd-last"):
            if "vsd" in step_times and variant in step_times and not args.merge:  # merged: not one run's times
                print(f"{variant} per-step time over VSD's: {step_times[variant] / step_times['vsd']:.2f}x "
                      f"({step_times['vsd']:.3f} -> {step_times[variant]:.3f} s)")
    RESULTS.mkdir(exist_ok=True)
    out = args.out or RESULTS / f"methods-{'-'.join(args.parts)}.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
