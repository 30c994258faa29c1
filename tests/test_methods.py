"""The method table is the one list of methods: recipes, the CLI, the stages and the Gaussian
example all take their method from it."""

from __future__ import annotations

import pytest

from prolificli.config import ConfigError, PriorConfig, stored_recipe, to_dict
from prolificli.methods import METHODS, build_distiller, build_recipe, methods_help


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_in_the_table_builds_and_defaults_its_cfg_scale(name, tiny_model_dir):
    from prolificli.distill.score_model import ScoreModel
    from prolificli.prior import load_prior

    recipe = build_recipe(None, [f"guidance.method={name}", f"texture.guidance.method={name}"])
    assert recipe.guidance.cfg_scale == recipe.texture.guidance.cfg_scale == METHODS[name].default_cfg_scale
    prior = load_prior(PriorConfig(model=str(tiny_model_dir), device="cpu", dtype="float32"))
    distiller = build_distiller(recipe.guidance, recipe, prior)
    assert distiller.guidance_scale == METHODS[name].default_cfg_scale
    assert isinstance(getattr(distiller, "score_model", None), ScoreModel) == METHODS[name].needs_score_model
    assert name in methods_help()


def test_an_unknown_method_names_the_choices_from_the_table():
    with pytest.raises(ConfigError) as error:
        build_recipe(None, ["geometry.guidance.method=dreamfield"])
    message = str(error.value)
    assert message.startswith("geometry.guidance.method: 'dreamfield'")
    assert all(repr(name) in message for name in METHODS)


def test_a_config_stored_before_the_rename_of_cfg_still_loads():
    old = to_dict(build_recipe(None, ["guidance.method=sds"]))
    for section in (old["guidance"], old["geometry"]["guidance"], old["texture"]["guidance"]):
        section["cfg"] = section.pop("cfg_scale")
    assert stored_recipe(old).guidance.cfg_scale == 100.0
    assert build_recipe(None, ["nerf.steps=3"], base=old).texture.guidance.cfg_scale == 7.5
    with pytest.raises(ConfigError, match=r"'guidance.cfg' is now 'guidance.cfg_scale'"):
        build_recipe(None, ["guidance.cfg=5"])
