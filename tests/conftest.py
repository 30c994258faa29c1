"""Shared fixtures: tiny random-weight diffusion models in diffusers layout, built once per session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from prolificli.recipe_files import PACKAGE_RECIPES
from prolificli.config import PriorConfig


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A latent model: 2x VAE, UNet on 4x16x16 latents, image_size 32, epsilon prediction."""
    from prolificli.prior.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-latent"), latent=True)


@pytest.fixture(scope="session")
def tiny_pixel_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pixel model: no VAE, UNet on 3x32x32 images, epsilon prediction."""
    from prolificli.prior.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-pixel"), latent=False)


@pytest.fixture
def tiny_prior(tiny_model_dir: Path):
    """A fresh DiffusionPrior on CPU in float32 per test, so tests may attach adapters to it."""
    from prolificli.prior import load_prior

    return load_prior(PriorConfig(model=str(tiny_model_dir), device="cpu", dtype="float32"))


@pytest.fixture(scope="session")
def tiny_nerf_run_template(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete NeRF stage (recipes/tiny.yaml, 6 VSD steps): its field is still close to the
    object-init density blob, a sphere of radius ~0.5, which is what the mesh stages need."""
    from prolificli.methods import build_recipe
    from prolificli.stages import nerf

    recipe = build_recipe(str(PACKAGE_RECIPES / "tiny.yaml"),
                          [f"prior.model={tiny_model_dir}"])
    out = tmp_path_factory.mktemp("nerf-run") / "run"
    nerf.run(out, recipe, prompt="an elephant skull")
    return out


@pytest.fixture
def tiny_nerf_run(tiny_nerf_run_template: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny NeRF run, for tests that add stages to it."""
    import shutil

    return Path(shutil.copytree(tiny_nerf_run_template, tmp_path / "run"))


# Tools from outside Python: the pinned npm packages in tools/js (`npm ci --prefix tools/js`) and
# Debian's chromium. A test that needs a missing one is skipped, with how to install it; CI sets
# PROLIFIC_REQUIRE_TOOLS=1, which makes it a failure instead, so CI cannot pass without them.
JS_TOOLS = Path(os.environ.get("PROLIFIC_JS_TOOLS", Path(__file__).resolve().parents[1] / "tools" / "js"))


def missing_tool(message: str):
    if os.environ.get("PROLIFIC_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{message} (PROLIFIC_REQUIRE_TOOLS=1)")
    pytest.skip(message)


def node_script(package: str, script: str) -> tuple[str, Path]:
    """node and one of tools/js's scripts, once the npm package it runs is installed."""
    node = shutil.which("node")
    if node is None or not (JS_TOOLS / "node_modules" / package / "package.json").is_file():
        missing_tool(f"needs node and {package}: npm ci --prefix {JS_TOOLS}")
    return node, JS_TOOLS / script


@pytest.fixture(scope="session")
def gltf_validator():
    """validate(path) -> the Khronos glTF validator's report (a dict) for a .glb or .gltf file."""
    node, script = node_script("gltf-validator", "validate-gltf.mjs")

    def validate(path: Path) -> dict:
        done = subprocess.run([node, str(script), str(path)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    return validate


@pytest.fixture(scope="session")
def splat_transform():
    """run(*args) -> PlayCanvas's splat-transform CLI (tools/js) on those arguments: its stdout,
    after asserting that it exited 0 and wrote nothing to stderr."""
    node = shutil.which("node")
    cli = JS_TOOLS / "node_modules" / "@playcanvas" / "splat-transform" / "bin" / "cli.mjs"
    if node is None or not cli.is_file():
        missing_tool(f"needs node and @playcanvas/splat-transform: npm ci --prefix {JS_TOOLS}")

    def run(*args: str | Path) -> str:
        done = subprocess.run([node, str(cli), "--no-tty", "--quiet", *map(str, args)], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0 and not done.stderr.strip(), (done.returncode, done.stderr)
        return done.stdout

    return run


@pytest.fixture(scope="session")
def report_in_chromium():
    """open(report, screenshot) -> what tools/js/report-screenshot.mjs saw in headless Chromium,
    every network request refused: {viewers, states, boxes, requests, errors}."""
    node, script = node_script("playwright-core", "report-screenshot.mjs")
    browser = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if browser is None:
        missing_tool("needs Chromium: apt-get install chromium (or set CHROMIUM to its path)")

    def open_report(report: Path, screenshot: Path) -> dict:
        done = subprocess.run([node, str(script), str(report), str(screenshot)], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "CHROMIUM": browser})
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    return open_report
