"""One self-contained HTML page comparing runs: per run its turntable (an animated GIF), its
numbers, and its loss curve from metrics.jsonl, all embedded as base64 so the file travels alone.

A run with a textured mesh also gets an interactive 3D view of its GLB: Google's <model-viewer>
(viewer/model-viewer.min.js, a pinned npm release vendored with its licences by tools/js/vendor.sh)
inlined into the page, so it works offline from the one file. A run with Gaussian-splat particles
gets one of its splat PLY: Spark, a three.js splat renderer (viewer/splat-viewer.min.js, Spark and
three.js bundled into one script by tools/js/vendor.sh). Where a viewer cannot run (no
JavaScript, no WebGL, the model fails to load) the page shows the turntable GIF instead.
"""

from __future__ import annotations

import base64
import html
import json
from functools import lru_cache
from importlib.resources import files
from io import BytesIO
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..files import write_bytes_atomic
from .media import gif_bytes


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def loss_curve_png(metrics_path: Path, keys: tuple[str, ...] = ("loss",)) -> bytes | None:
    """A small matplotlib plot of the logged curves (None when nothing was logged)."""
    if not metrics_path.is_file():
        return None
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    records = [r for r in records if "step" in r]
    if not any(k in r for r in records for k in keys):
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 2.4), dpi=100)
    for key in keys:
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        if points:
            ax.plot(*zip(*points), label=key, linewidth=1)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    buffer = BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


@lru_cache(maxsize=2)
def vendored_js(name: str) -> str:
    """A vendored viewer bundle (viewer/NAME), ready to inline in a <script>."""
    script = files(__package__).joinpath("viewer", name).read_text(encoding="utf-8")
    if "</script" in script.lower():  # would end the inline element early
        raise RuntimeError(f"the vendored bundle {name} contains '</script' and cannot be inlined")
    return script


def model_viewer_js() -> str:
    """The vendored <model-viewer> bundle (three.js included)."""
    return vendored_js("model-viewer.min.js")


# Each viewer records how loading ended in data-state (the Chromium test reads it). The CSS shows
# a viewer's fallback while <model-viewer> is undefined (no JavaScript, or the bundle did not
# run) and once the viewer failed (no WebGL, a bad model).
VIEWER_SCRIPT = """
for (const viewer of document.querySelectorAll("model-viewer")) {
  viewer.addEventListener("load", () => { viewer.dataset.state = "loaded"; });
  viewer.addEventListener("error", (event) => {
    viewer.dataset.state = "error";
    viewer.title = String(event.detail && event.detail.type);
    viewer.classList.add("failed");
  });
}
"""
# Each splat viewer is a canvas carrying its PLY (base64) and the evaluation camera's distance and
# field of view; the script draws it with Spark, orbiting about +z (our world is z-up), and marks it
# data-state="loaded" once it has drawn frames, or "error". The GIF stays on show until then.
SPLAT_VIEWER_SCRIPT = """
const { THREE, OrbitControls, SparkRenderer, SplatMesh } = window.prolificSplatViewer;
async function show(canvas) {
  const renderer = new THREE.WebGLRenderer({ canvas, antialias: false });
  const scene = new THREE.Scene();
  scene.background = new THREE.Color(1, 1, 1);
  const distance = Number(canvas.dataset.distance), elevation = Math.PI / 6;
  const camera = new THREE.PerspectiveCamera(Number(canvas.dataset.fovy), canvas.width / canvas.height, 0.01, 100);
  camera.up.set(0, 0, 1);
  camera.position.set(distance * Math.cos(elevation), 0, distance * Math.sin(elevation));
  const controls = new OrbitControls(camera, canvas);
  controls.autoRotate = true;
  const bytes = Uint8Array.from(atob(canvas.dataset.ply), (c) => c.charCodeAt(0));
  const splats = new SplatMesh({ fileBytes: bytes, fileType: "ply" });
  scene.add(new SparkRenderer({ renderer }));
  scene.add(splats);
  await splats.initialized;
  let frames = 0;
  renderer.setAnimationLoop(() => {
    controls.update();
    renderer.render(scene, camera);
    if (++frames === 30) canvas.dataset.state = "loaded";  // Spark sorts in a worker: a few frames in
  });
}
for (const canvas of document.querySelectorAll("canvas.splat-viewer")) {
  show(canvas).catch((error) => { canvas.dataset.state = "error"; canvas.title = String(error); });
}
"""

VIEWER_CSS = """model-viewer{width:320px;height:320px;background:#fff;border:1px solid #ddd}
.viewer img.turntable{width:320px} .viewer .fallback{display:none}
model-viewer:not(:defined), model-viewer.failed{display:none}
model-viewer:not(:defined) + .fallback, model-viewer.failed + .fallback{display:block}
canvas.splat-viewer{width:320px;height:320px;border:1px solid #ddd}
canvas.splat-viewer:not([data-state=loaded]){display:none}
canvas.splat-viewer:not([data-state=loaded]) + .fallback{display:block}"""


def viewer_html(glb: bytes, name: str, fallback: str) -> str:
    """An orbitable view of one GLB, with `fallback` (HTML) shown where the viewer cannot run."""
    return (f'<div class="viewer"><model-viewer src="{_data_uri(glb, "model/gltf-binary")}" '
            f'alt="{html.escape(name)}" camera-controls auto-rotate interaction-prompt="none" '
            f'tone-mapping="neutral" shadow-intensity="0.6"></model-viewer>'
            f'<div class="fallback">{fallback}</div></div>')


def splat_viewer_html(ply: bytes, name: str, fallback: str, distance: float, fovy_deg: float) -> str:
    """An orbitable view of one splat PLY, from `distance` with a vertical field of view of
    `fovy_deg`, with `fallback` (HTML) shown until it draws or where it cannot."""
    return (f'<div class="viewer"><canvas class="splat-viewer" width="320" height="320" '
            f'aria-label="{html.escape(name)}" data-distance="{distance}" data-fovy="{fovy_deg}" '
            f'data-ply="{base64.b64encode(ply).decode()}"></canvas>'
            f'<div class="fallback">{fallback}</div></div>')


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


class SplatModel(NamedTuple):
    """A run's splat particle for the report's viewer: its PLY and the evaluation camera."""

    ply: bytes
    distance: float
    fovy_deg: float


def write_report(path: Path, rows: list[dict], turntables: list[np.ndarray], curves: list[bytes | None],
                 columns: list[str], models: list[bytes | None] | None = None,
                 splats: list[SplatModel | None] | None = None) -> Path:
    """rows: one dict per run (the table's columns); turntables: uint8 [N,H,W,3] frames per run,
    of the stage measured (row["stage"]); models: per run its textured GLB's bytes, or None;
    splats: per run its splat particle, or None."""
    models = models if models is not None else [None] * len(rows)
    splats = splats if splats is not None else [None] * len(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row, frames, curve, glb, splat in zip(rows, turntables, curves, models, splats):
        cells = "".join(f"<td>{html.escape(format_value(row.get(c)))}</td>" for c in columns)
        gif = f'<img class="turntable" src="{_data_uri(gif_bytes(frames, fps=12), "image/gif")}" alt="turntable">'
        plot = f'<img src="{_data_uri(curve, "image/png")}" alt="loss curve">' if curve else "<p>no curve logged</p>"
        if splat is not None and row.get("stage") == "nerf":  # the splats the GIF shows: the GIF is the fallback
            gif = splat_viewer_html(splat.ply, f"{row['run']}: splats", gif, splat.distance, splat.fovy_deg)
        if glb is None:
            shown = gif
        elif row.get("stage") == "texture":  # the viewer shows what the GIF shows: the GIF is its fallback
            shown = viewer_html(glb, f"{row['run']}: texture/model.glb", gif)
        else:  # the GIF is of the stage measured; the viewer adds the textured mesh
            shown = gif + viewer_html(glb, f"{row['run']}: texture/model.glb",
                                      "<p>3D viewer unavailable (it needs JavaScript and WebGL)</p>")
        body.append(f'<section><h2>{html.escape(str(row["run"]))}</h2><div class="row">{shown}{plot}</div>'
                    f"<table><tr>{head}</tr><tr>{cells}</tr></table></section>")
    # the listeners first, so no viewer can load before they are attached
    scripts = (f'<script type="module">{VIEWER_SCRIPT}</script>\n<script type="module">{model_viewer_js()}</script>'
               if any(glb is not None for glb in models) else "")
    if "splat-viewer" in "".join(body):
        scripts += (f'\n<script>{vendored_js("splat-viewer.min.js")}</script>'
                    f'\n<script type="module">{SPLAT_VIEWER_SCRIPT}</script>')
    summary = "".join(f"<tr>{''.join(f'<td>{html.escape(format_value(r.get(c)))}</td>' for c in columns)}</tr>"
                      for r in rows)
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>prolificli eval</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:right}} .row{{display:flex;gap:1em;align-items:center}}
img.turntable{{width:192px;image-rendering:pixelated}}
{VIEWER_CSS}</style></head>
<body><h1>prolificli eval</h1>
<table><tr>{head}</tr>{summary}</table>
{''.join(body)}
{scripts}
</body></html>
"""
    write_bytes_atomic(path, page.encode())
    return path


def write_report_png(path: Path, rows: list[dict], turntables: list[np.ndarray], columns: list[str],
                     frames_per_row: int = 6) -> Path:
    """The same comparison as one PNG: per run a strip of turntable frames and its numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [c for c in columns if c != "run" and any(r.get(c) is not None for r in rows)]
    fig, axes = plt.subplots(len(rows), 2, figsize=(11, 1.3 * len(rows) + 0.3), dpi=100, squeeze=False,
                             gridspec_kw={"width_ratios": [1.2, 1]})
    for (strip_ax, text_ax), row, frames in zip(axes, rows, turntables):
        pick = np.linspace(0, len(frames) - 1, min(frames_per_row, len(frames))).round().astype(int)
        strip_ax.imshow(np.concatenate(list(frames[pick]), axis=1), interpolation="nearest")
        strip_ax.set_axis_off()
        strip_ax.set_title(str(row["run"]), fontsize=8, loc="left")
        text = "   ".join(f"{c} {format_value(row.get(c))}" for c in shown)
        text_ax.text(0, 0.5, "\n".join(_wrap(text, 70)), fontsize=7, va="center", family="monospace")
        text_ax.set_axis_off()
    fig.tight_layout()
    buffer = BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width)
