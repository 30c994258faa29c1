"""The mesh stages in the toy world: extract -> geometry -> texture from a NeRF run, measured
against the true object.

    python benchmarks/mesh_stages.py                                  # cube, sphere, cylinder NeRFs
    python benchmarks/mesh_stages.py --prompts "a red cube" --set geometry.steps=100
    python benchmarks/mesh_stages.py --prompts "a green cylinder" --set seed=1 \
        --out benchmarks/results/mesh-s1.json
    python benchmarks/mesh_stages.py --recipe toy-gaussians --out benchmarks/results/mesh_stages_splats.json

For each prompt: a first stage with the recipe (toy: a NeRF; toy-gaussians: splat particles) and
the overrides (or, for toy with none, the run benchmarks/toyworld.py left in
results/toyworld-runs/vsd-cfg7.5/), then `extract`, `geometry` and `texture` with the same recipe.
Reports Chamfer distance to the true object (in % of its longest side) of the extracted and the
refined mesh, the toy scorer's accuracy over 8 views of the textured GLB and its silhouette IoU,
and seconds in all and per step of each stage. Writes results/mesh_stages.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import trimesh
from rich.console import Console
from prolificli.recipe_files import PACKAGE_RECIPES

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
DEFAULT_PROMPTS = ["a red cube", "a blue sphere", "a green cylinder"]


def first_stage_run(prompt: str, recipe_file: str, workdir: Path, overrides: list[str],
                    console: Console) -> tuple[Path, float | None]:
    """A first-stage run for `prompt`: for the toy recipe with no overrides the toyworld benchmark's
    VSD run if there is one, else a new one (overrides e.g. `seed=1`, to repeat a shape). Returns
    the run and the seconds it took (None for a copied run)."""
    from prolificli.methods import build_recipe
    from prolificli.stages import nerf

    slug = prompt.replace(" ", "-")
    out = workdir / slug
    shutil.rmtree(out, ignore_errors=True)
    existing = RESULTS / "toyworld-runs" / "vsd-cfg7.5" / slug
    if (existing / "nerf" / "manifest.json").exists() and not overrides and Path(recipe_file).stem == "toy":
        shutil.copytree(existing, out)
        return out, None
    tic = time.perf_counter()
    nerf.run(out, build_recipe(recipe_file, overrides), prompt=prompt, console=console)
    return out, time.perf_counter() - tic


def step_seconds(stage: Path) -> float:
    """Median seconds of one optimisation step (the loop logs each step's own time)."""
    records = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    return round(float(np.median([r["step_seconds"] for r in records])), 3)


def timed(fn):
    tic = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", nargs="+", default=DEFAULT_PROMPTS)
    parser.add_argument("--recipe", choices=["toy", "toy-gaussians"], default="toy",
                        help="the first stage's recipe: NeRF particles (toy) or Gaussian splats")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="extra recipe override, for the first stage and the mesh stages")
    parser.add_argument("--runs", type=Path, default=RESULTS / "mesh-runs")
    parser.add_argument("--out", type=Path, default=RESULTS / "mesh_stages.json")
    args = parser.parse_args()
    console = Console(stderr=True)
    from prolificli.cli import quiet_libraries
    from prolificli.methods import build_recipe
    from prolificli.mesh.export import load_glb
    from prolificli.stages import extract, geometry, texture
    from prolificli.toyworld.measures import chamfer_distance, evaluate_textured_mesh, object_size
    from prolificli.toyworld.scorer import load_scorer
    from prolificli.toyworld.shapes import ground_truth_mesh, parse_prompt

    quiet_libraries()
    scorer = load_scorer()
    recipe_file = str(PACKAGE_RECIPES / f"{args.recipe}.yaml")
    rows = []
    for prompt in args.prompts:
        shape, _ = parse_prompt(prompt)
        run, t_first = first_stage_run(prompt, recipe_file, args.runs, args.overrides, console)
        base = json.loads((run / "nerf" / "manifest.json").read_text())["config"]
        recipe = build_recipe(recipe_file, args.overrides, base=base)
        truth, size = ground_truth_mesh(shape), object_size(shape)

        _, t_extract = timed(lambda: extract.run(run, recipe, console=console))
        extracted = trimesh.load(run / "extract" / "mesh.ply", process=False)
        _, t_geometry = timed(lambda: geometry.run(run, recipe, console=console))
        refined = trimesh.load(run / "geometry" / "mesh.ply", process=False)
        result, t_texture = timed(lambda: texture.run(run, recipe, console=console))

        mesh, uvs, image = load_glb(result.run_dir / "texture" / "model.glb")
        report = evaluate_textured_mesh(mesh.vertices, mesh.faces, uvs, image, recipe, prompt, scorer)
        rows.append({
            "prompt": prompt,
            "chamfer_extract_pct": 100 * chamfer_distance(extracted, truth) / size,
            "chamfer_geometry_pct": 100 * chamfer_distance(refined, truth) / size,
            "texture_prompt_accuracy": report.prompt_accuracy, "texture_iou": report.silhouette_iou,
            "texture_votes": report.shape_votes, "faces_extract": len(extracted.faces),
            "faces_geometry": len(refined.faces),
            "seconds": {"first_stage": t_first and round(t_first, 1), "extract": round(t_extract, 1),
                        "geometry": round(t_geometry, 1), "texture": round(t_texture, 1)},
            "seconds_per_step": {name: step_seconds(run / name) for name in ("geometry", "texture")},
        })
        print(json.dumps(rows[-1]), flush=True)

    print(f"\n{'prompt':<18} | {'chamfer extract %':>17} | {'geometry %':>10} | {'texture acc':>11} | {'IoU':>5} | "
          f"{'extract s':>9} | {'geom s/step':>11} | {'tex s/step':>10}")
    for r in rows:
        print(f"{r['prompt']:<18} | {r['chamfer_extract_pct']:>17.2f} | {r['chamfer_geometry_pct']:>10.2f} | "
              f"{r['texture_prompt_accuracy']:>11.3f} | {r['texture_iou']:>5.3f} | {r['seconds']['extract']:>9.1f} | "
              f"{r['seconds_per_step']['geometry']:>11.3f} | {r['seconds_per_step']['texture']:>10.3f}")
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
