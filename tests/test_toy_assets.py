"""The shipped toy prior and toy scorer: they load through the real code paths and do their job."""

from __future__ import annotations

import pytest
import torch

from prolificli.recipe_files import PACKAGE_RECIPES
from prolificli.config import PriorConfig, Recipe
from prolificli.prior import load_prior
from prolificli.render.background import Background
from prolificli.toyworld.data import BACKGROUND, make_dataset
from prolificli.toyworld.measures import depth_error, evaluate_particle, silhouette_iou
from prolificli.toyworld.scorer import load_scorer
from prolificli.toyworld.shapes import ToyObject, ToyObjectField


def test_toy_prior_loads_as_a_diffusers_model():
    prior = load_prior(PriorConfig(model="toy"))
    assert not prior.latent_space and prior.image_size == 32
    assert prior.prediction_type == "v_prediction"
    emb = prior.encode_prompts(["a red cube, front view", ""])
    assert emb.shape[0] == 2 and not torch.equal(emb[0], emb[1])


def test_toy_scorer_reads_fresh_renders():
    """Views from a seed the scorer never saw; its held-out accuracy gate is 95%."""
    scorer = load_scorer()
    data = make_dataset(views_per_object=2, resolution=32, seed=4242)
    images = data.images.permute(0, 3, 1, 2).float() / 255
    shapes, colours = scorer.classify(images)
    from prolificli.toyworld.shapes import COLOURS, SHAPES

    correct = [s == SHAPES[i] and c == list(COLOURS)[j]
               for s, c, i, j in zip(shapes, colours, data.shape_index.tolist(), data.colour_index.tolist())]
    assert sum(correct) / len(correct) >= 0.9
    assert scorer.matches(images[:1], "an object").item()  # a prompt naming nothing matches anything


def test_iou_and_depth_error_closed_forms():
    a = torch.zeros(1, 4, 4, 1)
    b = torch.zeros(1, 4, 4, 1)
    a[0, :2] = 1  # 8 pixels
    b[0, 1:3] = 1  # 8 pixels, 4 shared
    assert silhouette_iou(a, b) == 4 / 12
    depth_a, depth_b = a * 2.0, b * 2.5
    assert abs(depth_error(depth_a, a, depth_b, b) - 0.5) < 1e-6


def test_the_true_object_scores_as_itself():
    """Rendering the ground-truth field through the evaluation path: IoU ~1, depth error ~0,
    and a different shape scores clearly worse."""
    recipe = Recipe()
    scorer = load_scorer()
    background = Background(BACKGROUND)
    cube = ToyObjectField(ToyObject("cube", "red"))
    report = evaluate_particle(cube, background, recipe, "a red cube", scorer, views=4, resolution=32)
    assert report.silhouette_iou > 0.9 and report.depth_error < 0.02
    assert report.prompt_accuracy >= 0.75 and report.reading == ("cube", "red")
    sphere = ToyObjectField(ToyObject("sphere", "red"))
    wrong = evaluate_particle(sphere, background, recipe, "a red cube", scorer, views=4, resolution=32)
    assert wrong.silhouette_iou < report.silhouette_iou - 0.1


@pytest.mark.slow
def test_toy_recipe_end_to_end(tmp_path):
    """The README's offline demo, shortened: the shipped prior through the real CLI."""
    from typer.testing import CliRunner

    from prolificli.cli import app

    out = tmp_path / "cube"
    recipe = str(PACKAGE_RECIPES / "toy.yaml")
    result = CliRunner().invoke(app, ["nerf", "a red cube", "--recipe", recipe, "--out", str(out), "--steps", "3",
                                      "--set", "nerf.preview_every=3"])
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert (out / "nerf" / "previews" / "latest.png").is_file()


def test_the_toy_recipes_geometry_light_is_the_toy_worlds():
    from prolificli.methods import build_recipe
    from prolificli.toyworld.shapes import AMBIENT, LIGHT_DIRECTION

    recipe = build_recipe(str(PACKAGE_RECIPES / "toy.yaml"))
    assert recipe.geometry.shading == "lambert"
    assert tuple(recipe.geometry.light_direction) == LIGHT_DIRECTION and recipe.geometry.ambient == AMBIENT
