"""The tables of benchmarks/methods.py: per-seed rows summarised over seeds, several results
files merged into one table, and the tables printed.

A row is one run: {"method", "seed", measures..., a curve of the quality over steps}. A summary
row has "seed": "mean of N", each measure's mean and its (min, max) as "<measure>_range".
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path


def steps_to_reach(curve: dict[int, float], target: float, higher_is_better: bool) -> int | None:
    for step in sorted(curve):
        if (curve[step] >= target) if higher_is_better else (curve[step] <= target):
            return step
    return None


def summarize_2d(rows: list[dict]) -> list[dict]:
    """The per-seed rows with each run's steps to VSD's final FID of its seed, then the summaries."""
    return summarize(rows, "fid_curve", "fid", higher_is_better=False,
                     measures=["prompt_accuracy", "distinct", "fid", "white", "speckle", "s_per_step"])


def summarize_nerf(rows: list[dict]) -> list[dict]:
    """The per-seed rows with each run's steps to VSD's final mean IoU of its seed, then the
    summaries, with each prompt's distinct readings averaged over the seeds."""
    rows = summarize(rows, "iou_curve", "silhouette_iou", higher_is_better=True,
                     measures=["prompt_accuracy", "distinct", "silhouette_iou", "depth_error", "fid", "s_per_step"])
    for summary in (r for r in rows if not isinstance(r["seed"], int)):
        mine = [r for r in rows if r["method"] == summary["method"] and isinstance(r["seed"], int)]
        summary["distinct_per_prompt"] = {
            prompt: statistics.mean(len({tuple(p["reading"]) for p in r["per_prompt"][prompt]}) for r in mine)
            for prompt in mine[0]["per_prompt"]}
    return rows


def summarize(rows: list[dict], curve: str, final: str, higher_is_better: bool, measures: list[str]) -> list[dict]:
    """Each run's steps until its `curve` reached VSD's `final` of the same seed, then per method
    the mean and spread of `measures` over the seeds."""
    vsd_final = {r["seed"]: r[final] for r in rows if r["method"] == "vsd"}
    for row in rows:
        if vsd_final.get(row["seed"]) is not None and curve in row:
            row["steps_to_vsd_final"] = steps_to_reach(row[curve], vsd_final[row["seed"]], higher_is_better)
    summaries = seed_summaries(rows, measures + ["steps_to_vsd_final"])
    for summary in summaries:  # a mean over the seeds that reached it would hide those that did not
        reached = [r.get("steps_to_vsd_final") for r in rows if r["method"] == summary["method"] and curve in r]
        if None in reached and any(reached):
            summary["steps_to_vsd_final"] = f"{len(reached) - reached.count(None)} of {len(reached)} seeds"
            summary.pop("steps_to_vsd_final_range")
    return rows + summaries


def same_measures(a: dict, b: dict, rtol: float = 1e-3) -> bool:
    """Equal keys, and numbers equal to rtol: with another thread count the same samples' FID
    moves in the 4th digit (the float sums run in another order)."""
    return a.keys() == b.keys() and all(
        math.isclose(a[k], b[k], rel_tol=rtol) if isinstance(a[k], float) else a[k] == b[k] for k in a)


def merge(sources: list[str]) -> dict[str, dict]:
    """The per-seed rows of several results files as one table per part and key (2D: particle
    count; NeRF: prompt set). A source is FILE or FILE=METHOD,METHOD (those methods' rows only).
    Each file's 2D ancestral rows must match the first file's (the same samples, to 1e-3), so
    that every method is measured against the same floor and reference. A NeRF row without a
    seed is from a file that ran its first --seeds alone."""
    merged: dict[str, dict] = {"2d": {}, "nerf": {}}
    for source in sources:
        name, _, only = source.partition("=")
        path, keep = Path(name), set(only.split(",")) | {"ancestral"} if only else None
        data = json.loads(path.read_text())
        for part, tables in merged.items():
            for key, rows in data.get(part, {}).items():
                mine = tables.setdefault(int(key) if part == "2d" else key, [])
                for row in rows:
                    row.setdefault("seed", data["args"]["seeds"][0])
                    if not isinstance(row["seed"], int) or (keep is not None and row["method"] not in keep):
                        continue  # a summary row, or a method not asked for
                    row.pop("steps_to_vsd_final", None)
                    for curve in ("fid_curve", "iou_curve"):
                        if curve in row:
                            row[curve] = {int(step): value for step, value in row[curve].items()}
                    twin = next((r for r in mine if (r["method"], r["seed"]) == (row["method"], row["seed"])), None)
                    if twin is None:
                        mine.append(row)
                    elif row["method"] == "ancestral" and not same_measures(twin, row):
                        raise SystemExit(f"{path}: the ancestral floor of seed {row['seed']} differs from the "
                                         "first file's: the runs did not share their samples")
                    elif row["method"] != "ancestral":
                        raise SystemExit(f"{path}: {part} {key} {row['method']} seed {row['seed']} is in two files")

    def by_seed(rows):
        return sorted(rows, key=lambda r: r["seed"])

    return {"2d": {k: summarize_2d(by_seed(rows)) for k, rows in merged["2d"].items()},
            "nerf": {k: summarize_nerf(by_seed(rows)) for k, rows in merged["nerf"].items()}}


def seed_summaries(rows: list[dict], measures: list[str]) -> list[dict]:
    """Per method, each measure's mean over seeds and its spread (min, max)."""
    summaries = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        summary = {"method": method, "seed": f"mean of {len(mine)}"}
        for m in measures:
            values = [r[m] for r in mine if r.get(m) is not None]
            if values:
                summary[m] = statistics.mean(values)
                summary[f"{m}_range"] = (min(values), max(values))
        summaries.append(summary)
    return summaries


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    """A summary row's cell reads "mean [min, max]" over its seeds."""
    print(f"\n{title}")
    width = 22
    print(" | ".join(f"{c:>{width}}" if i else f"{c:<24}" for i, c in enumerate(columns)))
    for r in rows:
        cells = []
        for i, c in enumerate(columns):
            v, spread = r.get(c), r.get(f"{c}_range")
            text = "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
            if spread and spread[0] != spread[1]:
                text += f" [{spread[0]:.3g}, {spread[1]:.3g}]"
            cells.append(f"{text:>{width}}" if i else f"{text:<24}")
        print(" | ".join(cells))


TABLE_2D = ["method", "seed", "prompt_accuracy", "distinct", "fid", "white", "speckle", "steps_to_vsd_final",
            "s_per_step"]
TABLE_NERF = ["method", "seed", "prompt_accuracy", "distinct", "silhouette_iou", "depth_error", "fid",
              "steps_to_vsd_final", "s_per_step"]


