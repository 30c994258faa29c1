"""The eval report's 3D viewer: the vendored <model-viewer> is the pinned npm release, and in
headless Chromium, offline, it shows a GLB's colour, or gives way to the GIF when it cannot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prolificli.evaluation.report import write_report

pytestmark = pytest.mark.slow  # whole stages, torchrun, Chromium or a download: python -m pytest -m 'not slow' skips them

VIEWER = Path(__file__).resolve().parents[1] / "src" / "prolificli" / "evaluation" / "viewer"
RED, BLUE = (0.85, 0.1, 0.1), (0, 0, 200)


def test_the_vendored_viewer_is_the_pinned_release_with_its_licences():
    from conftest import JS_TOOLS, missing_tool

    pinned = json.loads((JS_TOOLS / "package.json").read_text())["devDependencies"]["@google/model-viewer"]
    assert json.loads((VIEWER / "versions.json").read_text())["@google/model-viewer"] == pinned
    licences = {"model-viewer": "Apache License", "three": "MIT License", "lit": "BSD 3-Clause",
                "gainmap-js": "MIT License"}  # what the bundle carries
    for name, licence in licences.items():
        assert licence in (VIEWER / f"LICENSE.{name}").read_text(), name
    package = JS_TOOLS / "node_modules" / "@google" / "model-viewer"
    if not package.is_dir():
        missing_tool(f"needs the pinned npm packages: npm ci --prefix {JS_TOOLS}")
    assert json.loads((package / "package.json").read_text())["version"] == pinned
    shipped = (VIEWER / "model-viewer.min.js").read_bytes()
    assert shipped == (package / "dist" / "model-viewer.min.js").read_bytes(), "run tools/js/vendor.sh"


def sphere_glb(tmp_path: Path, colour) -> bytes:
    import trimesh

    from prolificli.mesh.export import bake_texture, save_glb, unwrap
    from prolificli.mesh.mesh import Mesh

    tm = trimesh.creation.icosphere(3, 0.5)
    uv_mesh = unwrap(Mesh(torch.tensor(tm.vertices, dtype=torch.float32), torch.tensor(tm.faces)), size=64)
    texture = bake_texture(uv_mesh, lambda p: torch.tensor(colour).expand(len(p), 3), size=64)
    return save_glb(uv_mesh, texture, tmp_path / "sphere.glb").read_bytes()


def blue_turntable() -> np.ndarray:
    frames = np.zeros((4, 32, 32, 3), np.uint8)
    frames[...] = BLUE
    return frames


def region(screenshot: Path, box: dict) -> np.ndarray:
    image = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    x, y, w, h = (int(round(box[k])) for k in ("x", "y", "width", "height"))
    return image[y:y + h, x:x + w]


def fraction(pixels: np.ndarray, rgb, tolerance: int) -> float:
    return float((np.abs(pixels - np.array(rgb)).max(-1) <= tolerance).mean())


def test_viewer_shows_the_models_colour_offline(tmp_path, report_in_chromium):
    report = write_report(tmp_path / "alone" / "report.html", [{"run": "red sphere", "stage": "texture"}],
                          [blue_turntable()], [None], ["run", "stage"], [sphere_glb(tmp_path, RED)])
    seen = report_in_chromium(report, tmp_path / "shot.png")
    assert seen["viewers"] == 1 and seen["states"] == ["loaded"], seen
    assert seen["requests"] == [] and seen["errors"] == [], seen  # nothing fetched: one file, offline
    pixels = region(tmp_path / "shot.png", seen["boxes"][0])
    reddish = (pixels[..., 0] > 120) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert reddish.mean() > 0.3  # the sphere fills most of the view (shaded, so not one exact red)
    assert fraction(pixels, BLUE, 40) < 0.01  # not the fallback GIF


def test_viewer_gives_way_to_the_gif_when_the_model_fails(tmp_path, report_in_chromium):
    report = write_report(tmp_path / "report.html", [{"run": "broken", "stage": "texture"}], [blue_turntable()],
                          [None], ["run", "stage"], [b"glTF, but not really"])
    seen = report_in_chromium(report, tmp_path / "shot.png")
    assert seen["states"] == ["error"], seen
    image = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB")).astype(int)
    assert fraction(image, BLUE, 10) > 0.05  # the GIF is on the page instead


def test_a_report_without_meshes_carries_no_viewer(tmp_path):
    report = write_report(tmp_path / "report.html", [{"run": "nerf only", "stage": "nerf"}], [blue_turntable()],
                          [None], ["run", "stage"], [None])
    page = report.read_text()
    assert "<model-viewer" not in page and "<script" not in page and report.stat().st_size < 20_000


# -- the splat viewer (Spark) ------------------------------------------------------------------


def test_the_vendored_splat_viewer_is_the_pinned_packages_bundled(tmp_path):
    """splat-viewer.min.js is what vendor.sh's esbuild makes of the pinned Spark and three.js."""
    import subprocess

    from conftest import JS_TOOLS, missing_tool

    pinned = json.loads((JS_TOOLS / "package.json").read_text())["devDependencies"]
    versions = json.loads((VIEWER / "versions.json").read_text())
    assert versions["@sparkjsdev/spark"] == pinned["@sparkjsdev/spark"] and versions["three"] == pinned["three"]
    assert "MIT License" in (VIEWER / "LICENSE.spark").read_text()
    esbuild = JS_TOOLS / "node_modules" / ".bin" / "esbuild"
    if not esbuild.exists():
        missing_tool(f"needs the pinned npm packages: npm ci --prefix {JS_TOOLS}")
    for package in ("@sparkjsdev/spark", "three"):
        assert json.loads((JS_TOOLS / "node_modules" / package / "package.json").read_text())["version"] == pinned[package]
    subprocess.run([str(esbuild), str(JS_TOOLS / "splat-viewer-entry.mjs"), "--bundle", "--minify", "--format=iife",
                    "--legal-comments=none", "--log-level=warning", f"--outfile={tmp_path / 'bundle.js'}"], check=True)
    assert (tmp_path / "bundle.js").read_bytes() == (VIEWER / "splat-viewer.min.js").read_bytes(), "run tools/js/vendor.sh"


def red_splat_ply() -> bytes:
    from prolificli.config import GaussiansConfig
    from prolificli.scene.gaussians import GaussianCloud
    from prolificli.scene.splat_ply import splat_ply_bytes

    cloud = GaussianCloud.initial(GaussiansConfig(count=3000, init_radius=0.4, init_opacity=0.9), 1.0,
                                  generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cloud.color_logits[:] = torch.logit(torch.tensor(RED))
    return splat_ply_bytes(cloud)


def test_splat_viewer_shows_the_splats_colour_offline(tmp_path, report_in_chromium):
    from prolificli.evaluation.report import SplatModel

    report = write_report(tmp_path / "report.html", [{"run": "red ball", "stage": "nerf"}], [blue_turntable()], [None],
                          ["run", "stage"], splats=[SplatModel(red_splat_ply(), 1.4, 50.0)])
    seen = report_in_chromium(report, tmp_path / "shot.png")
    assert seen["splats"] == 1 and seen["splatStates"] == ["loaded"], seen
    assert seen["requests"] == [] and seen["errors"] == [], seen  # nothing fetched: one file, offline
    pixels = region(tmp_path / "shot.png", seen["splatBoxes"][0])
    reddish = (pixels[..., 0] > 150) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert reddish.mean() > 0.2  # a ball of radius 0.4 seen from 1.4 away, unshaded albedo
    assert fraction(pixels, BLUE, 40) < 0.01
    image = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB")).astype(int)
    assert fraction(image, BLUE, 10) < 0.001  # the GIF gave way to the viewer


def test_splat_viewer_gives_way_to_the_gif_when_the_file_is_broken(tmp_path, report_in_chromium):
    from prolificli.evaluation.report import SplatModel

    report = write_report(tmp_path / "report.html", [{"run": "broken", "stage": "nerf"}], [blue_turntable()], [None],
                          ["run", "stage"], splats=[SplatModel(b"ply\nnot really", 1.4, 50.0)])
    seen = report_in_chromium(report, tmp_path / "shot.png")
    assert seen["splatStates"] == ["error"], seen
    image = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB")).astype(int)
    assert fraction(image, BLUE, 10) > 0.05  # the GIF is on the page instead
