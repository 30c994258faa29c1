"""The 2D mode (scene.representation: image): the identity renderer, its stage artifacts, and the
mesh stages refusing such a run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from prolificli.config import GuidanceConfig
from prolificli.methods import build_recipe
from prolificli.distill import SDS
from prolificli.stages.image import ImageParticles
from helpers import TINY_RECIPE, assert_one_line_error, invoke


def test_the_gradient_on_an_image_particle_is_the_distillation_gradient(tiny_prior):
    """g(theta, c) = theta: d loss / d theta is the batch mean of the image-space gradient."""
    recipe = build_recipe(TINY_RECIPE, ["scene.representation=image", "nerf.particles=2", "nerf.batch_size=3"])
    problem = ImageParticles(recipe, tiny_prior, "a pineapple", torch.Generator().manual_seed(0))
    assert problem.images[0].shape == (4, 16, 16)  # the tiny model's latents
    assert not torch.equal(problem.images[0], problem.images[1])
    view = problem.sample_view(0)
    x0 = problem.render(1, view, 0).image
    assert x0.shape == (3, 4, 16, 16) and view.cond.camera.abs().sum() == 0
    sds = SDS(tiny_prior, GuidanceConfig(method="sds", cfg_scale=7.5))
    out = sds(x0, view.cond, 0, generator=torch.Generator().manual_seed(1))
    out.loss.backward()
    torch.testing.assert_close(problem.images[1].grad, out.grad.mean(0))
    assert problem.images[0].grad is None


def test_image_particles_round_trip_through_their_tensors(tiny_prior):
    recipe = build_recipe(TINY_RECIPE, ["scene.representation=image", "nerf.particles=2"])
    a = ImageParticles(recipe, tiny_prior, "a pineapple", torch.Generator().manual_seed(0))
    b = ImageParticles(recipe, tiny_prior, "a pineapple", torch.Generator().manual_seed(1))
    b.load_tensors(a.tensors())
    torch.testing.assert_close(b.rgb(), a.rgb())


@pytest.mark.slow
def test_2d_run_writes_its_images_and_the_mesh_stages_refuse_it(tiny_pixel_model_dir, tmp_path):
    from prolificli.rundir.outputs import open_images

    out = tmp_path / "flat"
    result = invoke("nerf", "a pineapple", "--recipe", TINY_RECIPE, "--model", str(tiny_pixel_model_dir), "--out",
                    str(out), "--method", "vsd", "--steps", "3", "--particles", "2",
                    "--set", "scene.representation=image")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "nerf" / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert {"images/particle0.png", "images/particle1.png"} <= set(manifest["outputs"])
    images = open_images(out).decode()
    assert images.shape == (2, 3, 32, 32)
    png = np.asarray(Image.open(out / "nerf" / "images" / "particle1.png")) / 255
    np.testing.assert_allclose(png, images[1].permute(1, 2, 0).numpy(), atol=0.5 / 255 + 1e-6)
    assert_one_line_error(invoke("extract", str(out)), "2D run", "images")
