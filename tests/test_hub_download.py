"""A model id a user types, downloaded as on a connected machine: `prolific nerf --model org/tiny-sd`
against a hub on 127.0.0.1 (tests/local_hub.py, through HF_ENDPOINT) with an empty HF_HOME, then
the same run from the cache with the hub gone, then a pinned --revision. Each run is a fresh
`prolific` process, so huggingface_hub reads HF_ENDPOINT and HF_HOME as a user's would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from local_hub import LocalHub
from prolificli.recipe_files import PACKAGE_RECIPES
from prolificli.prior.tiny import build_tiny_model

pytestmark = pytest.mark.slow  # whole stages, torchrun, Chromium or a download: python -m pytest -m 'not slow' skips them

REPO = "org/tiny-sd"


@pytest.fixture(scope="module")
def hub(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """org/tiny-sd with two commits: an older model tagged v1, and main (the test model)."""
    hub = LocalHub()
    older = build_tiny_model(tmp_path_factory.mktemp("tiny-v1"), seed=1)
    hub.v1 = hub.add(REPO, older, refs=("v1",))
    hub.main = hub.add(REPO, tiny_model_dir, refs=("main",))
    hub.older = older
    hub.start()
    yield hub
    hub.stop()


def prolific(hf_home: Path, endpoint: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(hf_home), HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1")
    return subprocess.run([sys.executable, "-m", "prolificli.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def nerf(hf_home: Path, endpoint: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return prolific(hf_home, endpoint, "nerf", "x", "--model", REPO, "--recipe", str(PACKAGE_RECIPES / "tiny.yaml"),
                    "--out", str(out), *extra)


def prior_of(run: Path) -> dict:
    return json.loads((run / "nerf" / "manifest.json").read_text())["details"]["prior"]


def test_download_then_cache_then_pinned_revision(hub: LocalHub, tmp_path: Path) -> None:
    hf_home = tmp_path / "hf-home"  # empty: nothing cached
    endpoint = hub.url

    # 1. the first run downloads the model from the hub and completes
    done = nerf(hf_home, endpoint, tmp_path / "first")
    assert done.returncode == 0, done.stderr
    assert prior_of(tmp_path / "first") == {"model": REPO, "revision": None, "commit": hub.main, "path": None}
    fetched = {path for method, path in hub.requests if method == "GET"}
    assert f"/{REPO}/resolve/main/model_index.json" in fetched
    assert f"/{REPO}/resolve/{hub.main}/unet/diffusion_pytorch_model.safetensors" in fetched
    snapshot = hf_home / "hub" / "models--org--tiny-sd" / "snapshots" / hub.main
    assert (snapshot / "unet" / "diffusion_pytorch_model.safetensors").is_file()

    # 2. with the hub gone, a second run loads the same commit from the cache
    hub.stop()
    try:
        done = nerf(hf_home, endpoint, tmp_path / "cached")
        assert done.returncode == 0, done.stderr
        assert prior_of(tmp_path / "cached")["commit"] == hub.main
    finally:
        hub.start()
    endpoint = hub.url  # a new port

    # 3. --revision v1 resolves the tag to its commit, downloads that commit, and the manifest says so
    done = nerf(hf_home, endpoint, tmp_path / "pinned", "--revision", "v1")
    assert done.returncode == 0, done.stderr
    assert prior_of(tmp_path / "pinned") == {"model": REPO, "revision": "v1", "commit": hub.v1, "path": None}
    config = json.loads((tmp_path / "pinned" / "nerf" / "manifest.json").read_text())["config"]
    assert config["prior"]["revision"] == "v1"
    weights = "unet/diffusion_pytorch_model.safetensors"
    pinned = hf_home / "hub" / "models--org--tiny-sd" / "snapshots" / hub.v1 / weights
    assert pinned.read_bytes() == (hub.older / weights).read_bytes()
    assert pinned.read_bytes() != (snapshot / weights).read_bytes()  # the two commits do differ

    # 4. a revision the hub does not have is one line, naming it
    done = nerf(hf_home, endpoint, tmp_path / "nope", "--revision", "no-such-tag")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and "no-such-tag" in lines[-1], done.stderr
    assert "Traceback" not in done.stderr


def test_a_resumed_stage_loads_the_commit_it_started_with(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resuming a stage whose manifest recorded a hub commit asks for that commit, not the branch
    head (which may have moved since); a stage without one loads the recipe's revision."""
    import types

    import torch
    from rich.console import Console

    import prolificli.prior
    from prolificli.config import Recipe
    from prolificli.stages.common import start_session

    asked = []
    monkeypatch.setattr(prolificli.prior, "load_prior",
                        lambda cfg: asked.append(cfg) or types.SimpleNamespace(device=torch.device("cpu")))
    recipe = Recipe()
    start_session(recipe, Console(quiet=True), resumed={"details": {"prior": {"commit": "c0ffee" * 6 + "c0ff"}}})
    start_session(recipe, Console(quiet=True), resumed={"details": {"prior": {"commit": None, "path": "/m"}}})
    start_session(recipe, Console(quiet=True))
    assert [cfg.revision for cfg in asked] == ["c0ffee" * 6 + "c0ff", None, None]
    assert all(cfg.model == recipe.prior.model for cfg in asked)
