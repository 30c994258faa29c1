"""`prolific render`: a stage's artifact along a turntable orbit, as MP4, GIF and a contact sheet.

Writes RUN/render/<stage>[-particleK]/: turntable.mp4, turntable.gif, sheet.png (rows rgb,
normals, depth, opacity at 8 evenly spaced frames), render.json (what was rendered, how), and
with --save-frames the rgb frames as frames/0000.png, ...
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..cameras import orbit_cameras
from ..config import ConfigError, stored_recipe
from ..evaluation.frames import STAGES, latest_stage, render_all, renderer
from ..evaluation.media import contact_sheet, write_gif, write_mp4
from ..files import to_uint8, write_json_atomic, write_png
from ..rundir.directory import RunDir


@dataclass
class RenderSettings:
    stage: str | None = None  # None: the latest complete stage
    particle: int = 0
    frames: int = 120  # the paper's test views: 120 around the object at 15 degrees
    resolution: int = 256
    elevation: float = 15.0
    distance: float | None = None  # None: the recipe's evaluation distance
    fovy: float | None = None  # None: the recipe's evaluation field of view
    fps: int = 30
    save_frames: bool = False


@dataclass
class RenderResult:
    out_dir: Path
    stage: str
    files: list[str]
    seconds: float


def run(run_dir: Path, settings: RenderSettings, console: Console | None = None) -> RenderResult:
    import time

    console = console or Console(stderr=True)
    if settings.frames < 1 or settings.resolution < 8:
        raise ConfigError("--frames must be at least 1 and --resolution at least 8")
    if settings.stage is not None and settings.stage not in STAGES:
        raise ConfigError(f"--stage must be one of {', '.join(STAGES)}, not {settings.stage!r}")
    run = RunDir.open(run_dir)
    stage = settings.stage or latest_stage(run)
    render = renderer(run, stage, settings.particle)
    cam = stored_recipe(run.stage(stage).manifest["config"]).camera  # every stage records its whole recipe
    distance = settings.distance or cam.eval_distance
    fovy = settings.fovy or cam.eval_fovy_deg
    cameras = orbit_cameras(settings.frames, settings.elevation, distance, fovy)

    tic = time.perf_counter()
    columns = [TextColumn(f"render {stage}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("frames", total=settings.frames)
        frames = render_all(render, cameras, settings.resolution, advance=lambda n: progress.advance(task, n))

    name = stage if settings.particle == 0 else f"{stage}-particle{settings.particle}"
    out = run.path / "render" / name
    out.mkdir(parents=True, exist_ok=True)
    rgb = to_uint8(frames.rgb)
    written = [write_mp4(rgb, out / "turntable.mp4", settings.fps), write_gif(rgb, out / "turntable.gif", settings.fps),
               write_png(contact_sheet(frames), out / "sheet.png")]
    if settings.save_frames:
        (out / "frames").mkdir(exist_ok=True)
        written += [write_png(image, out / "frames" / f"{i:04d}.png") for i, image in enumerate(rgb)]
    seconds = time.perf_counter() - tic
    files = [str(p.relative_to(out)) for p in written]
    write_json_atomic(out / "render.json", {"stage": stage, **asdict(settings), "distance": distance, "fovy": fovy,
                                            "files": files, "seconds": round(seconds, 2)})
    return RenderResult(out, stage, files, seconds)
