"""`prolific eval`: measure runs side by side (CLIP score and R-precision, 3D-FID, toy geometry).

For each run: --clip renders `views` views at 15 degrees and averages the CLIP similarity to the
prompt (and, given several prompts among the runs, the CLIP R-precision: how often a view's best
match among them is its own prompt). --fid renders `fid_views` views at 30 degrees and compares
their Inception features with `fid_samples` images the run's own prior draws for the prompt (with
the view suffix of each camera), and also CLIP features when a real CLIP model is used.
--geometry compares the surface with the toy world's true object. Each run gets
RUN/eval/metrics.json; one HTML report compares them all.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..cameras import orbit_cameras, view_prompts
from ..config import ConfigError, stored_recipe
from ..evaluation.clip import DEFAULT_CLIP, load_clip, r_precision
from ..evaluation.frames import STAGES, complete_stages, latest_stage, render_all, renderer
from ..files import to_uint8, write_json_atomic
from ..rundir.directory import RunDir

COLUMNS = ["run", "stage", "method", "cfg", "particles", "steps", "seconds", "clip", "r_precision", "fid",
           "fd_clip", "fid_images", "chamfer_pct", "volume_iou"]


@dataclass
class EvalSettings:
    clip: bool = False
    fid: bool = False
    geometry: bool = False
    clip_model: str = DEFAULT_CLIP
    stage: str | None = None  # None: each run's latest complete stage
    particle: int = 0
    views: int = 120  # the L2-VSD paper's CLIP views
    resolution: int = 256
    fid_views: int = 120
    fid_samples: int = 120
    sample_steps: int = 50
    seed: int = 0


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True)


def describe(run: RunDir, stage: str, label: str) -> dict:
    """What the run is, from its manifests: the columns before the metrics."""
    nerf = run.stage("nerf").manifest or {}
    config = nerf.get("config")
    recipe = stored_recipe(config) if config else None
    guidance = recipe.guidance if recipe else None
    cfg = guidance.cfg_scale if guidance else None  # a stored recipe is resolved: a number
    manifest = run.stage(stage).manifest or {}
    return {"run": label, "stage": stage, "method": guidance.method if guidance else None, "cfg": cfg,
            "particles": recipe.nerf.particles if recipe else None, "steps": manifest.get("steps"),
            "seconds": round(float((manifest.get("timings") or {}).get("seconds") or 0.0), 1)}


def textured_glb(run: RunDir) -> bytes | None:
    """The run's textured GLB, for the report's 3D viewer, when its texture stage is complete."""
    from ..rundir.outputs import open_textured

    return open_textured(run).glb.read_bytes() if "texture" in complete_stages(run) else None


def splat_model(run: RunDir, particle: int, distance: float, fovy_deg: float):
    """The run's splat particle for the report's viewer (its PLY, seen from the evaluation
    camera), when its first stage is complete with Gaussian-splat particles; else None."""
    from ..evaluation.report import SplatModel

    path = run.stage("nerf").path / "splats" / f"particle{particle}.ply"
    if "nerf" not in complete_stages(run) or not path.is_file():  # a NeRF or 2D run
        return None
    return SplatModel(path.read_bytes(), distance, fovy_deg)


def _label(path: Path, all_paths: list[Path]) -> str:
    """The run's directory name, with its parent's when two runs share a name (sds/x vs vsd/x)."""
    same = sum(Path(p).resolve().name == path.resolve().name for p in all_paths)
    return path.resolve().name if same == 1 else f"{path.resolve().parent.name}/{path.resolve().name}"


def evaluate(run_dirs: list[Path], settings: EvalSettings, console: Console | None = None,
             report: Path | None = None) -> tuple[list[dict], Path | None]:
    from ..evaluation.fid import InceptionFeatures, frechet_distance, prior_samples
    from ..evaluation.geometry import geometry_metrics
    from ..evaluation.report import loss_curve_png, write_report, write_report_png
    from ..prior import load_prior

    console = console or Console(stderr=True)
    if not (settings.clip or settings.fid or settings.geometry):
        raise ConfigError("say what to measure: --clip, --fid and/or --geometry")
    if settings.stage is not None and settings.stage not in STAGES:
        raise ConfigError(f"--stage must be one of {', '.join(STAGES)}, not {settings.stage!r}")
    runs = [RunDir.open(path) for path in run_dirs]
    prompts = [run.info["prompt"] for run in runs]
    prompt_set = sorted(set(prompts))
    clip = load_clip(settings.clip_model) if settings.clip else None
    if settings.fid and clip is None:  # CLIP only adds fd_clip to FID: use it where it loads
        try:
            clip = load_clip(settings.clip_model)
        except ConfigError as exc:
            console.print(f"[yellow]no fd_clip: {exc}[/]", highlight=False)
    priors = {}  # each prior loaded once
    inception = InceptionFeatures() if settings.fid else None
    rows, turntables, curves, models, splats = [], [], [], [], []
    for path, run, prompt in zip(run_dirs, runs, prompts):
        tic = time.perf_counter()
        stage = settings.stage or latest_stage(run)
        render = renderer(run, stage, settings.particle)
        recipe = stored_recipe(run.stage(stage).manifest["config"])  # every stage records its whole recipe
        cam = recipe.camera
        distance, fovy = cam.eval_distance, cam.eval_fovy_deg
        row = describe(run, stage, _label(Path(path), run_dirs))
        with _progress(console) as progress:
            views = orbit_cameras(settings.views, 15.0, distance, fovy)
            task = progress.add_task(f"{run.path.name}: {stage} views", total=len(views))
            frames = render_all(render, views, settings.resolution, advance=lambda n: progress.advance(task, n))
            images = frames.rgb.permute(0, 3, 1, 2)
            if settings.clip:
                row["clip"] = float(clip.similarity(images, [prompt]).mean())
                if len(prompt_set) > 1:
                    row["r_precision"] = r_precision(clip.similarity(images, prompt_set), prompt_set.index(prompt))
            if settings.fid:
                fid_cameras = orbit_cameras(settings.fid_views, 30.0, distance, fovy)
                task = progress.add_task(f"{run.path.name}: views at 30 deg", total=len(fid_cameras))
                fid_frames = render_all(render, fid_cameras, settings.resolution,
                                        advance=lambda n: progress.advance(task, n))
                fid_views = fid_frames.rgb.permute(0, 3, 1, 2)
                sample_cameras = orbit_cameras(settings.fid_samples, 30.0, distance, fovy)
                task = progress.add_task(f"{run.path.name}: prior samples", total=settings.fid_samples)
                if recipe.prior.model not in priors:
                    priors[recipe.prior.model] = load_prior(recipe.prior)
                samples = prior_samples(priors[recipe.prior.model], recipe.prior.model, view_prompts(prompt, sample_cameras, cam),
                                        steps=settings.sample_steps, negative_prompt=recipe.prior.negative_prompt,
                                        seed=settings.seed, advance=lambda n: progress.advance(task, n))
                row["fid"] = frechet_distance(inception(fid_views), inception(samples))
                row["fid_images"] = f"{len(fid_views)} vs {len(samples)}"
                features = clip.features(fid_views) if clip is not None else None
                if features is not None:
                    row["fd_clip"] = frechet_distance(features.double().numpy(), clip.features(samples).double().numpy())
        if settings.geometry:
            with console.status(f"{run.path.name}: surface against the true object"):
                measured = geometry_metrics(run, stage, prompt, settings.particle)
            if measured is None:
                console.print(f"[yellow]{run.path.name}: '{prompt}' names no toy shape; no geometry metrics[/]")
            else:
                row.update(measured)
        row["eval_seconds"] = round(time.perf_counter() - tic, 1)
        out = run.path / "eval"
        out.mkdir(exist_ok=True)
        write_json_atomic(out / "metrics.json", {"prompt": prompt, **row, "settings": asdict(settings)})
        rows.append(row)
        turntables.append(to_uint8(frames.rgb[:: max(1, len(frames) // 24)]))
        curves.append(loss_curve_png(run.stage(stage).path / "metrics.jsonl"))
        models.append(textured_glb(run))
        splats.append(splat_model(run, settings.particle, distance, fovy))
    written = None
    if report is not None:
        written = write_report(report, rows, turntables, curves, COLUMNS, models, splats)
        write_report_png(report.with_suffix(".png"), rows, turntables, COLUMNS)
    return rows, written


def print_table(rows: list[dict], console: Console) -> None:
    from rich.table import Table

    from ..evaluation.report import format_value

    shown = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
    table = Table(*shown)
    for r in rows:
        table.add_row(*(format_value(r.get(c)) for c in shown))
    console.print(table)

