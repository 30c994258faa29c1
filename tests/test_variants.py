"""L-VSD and ESD against VSD and against eps_phi computed by hand: L-VSD scores with the score
model after its update (VSD before it), ESD with the mix of the camera-free and camera predictions."""

from __future__ import annotations

import pytest
import torch

from prolificli.recipe_files import PACKAGE_RECIPES
from prolificli.config import ConfigError, ESDConfig, GuidanceConfig, ScoreModelConfig
from prolificli.methods import build_recipe
from prolificli.distill import ESD, LVSD, VSD, ScoreModel
from helpers import TINY_RECIPE, closed_form_alpha_sigma, invoke, make_batch, perturb_trainable


def run_from(distiller_cls, score_model, initial, score_cfg, x0, cond, t, eps, **kwargs):
    """Reset phi to `initial`, run one distillation step with a fixed seed; the gradient and phi after."""
    score_model.load_trainable_state_dict(initial)
    distiller = distiller_cls(score_model.prior, score_model, GuidanceConfig(cfg_scale=7.5), score_cfg, **kwargs)
    out = distiller(x0, cond, step=0, t=t, eps=eps, generator=torch.Generator().manual_seed(11))
    return out.grad, score_model.trainable_state_dict()


def test_lvsd_scores_with_the_updated_score_model_and_vsd_with_the_old(tiny_prior):
    prior = tiny_prior
    score_cfg = ScoreModelConfig(lr=1e-2, train_steps=2)
    score_model = ScoreModel(prior, score_cfg)
    perturb_trainable(score_model)
    initial = score_model.trainable_state_dict()
    x0, cond, eps = make_batch(prior, 2)
    t = torch.tensor([150, 600])

    vsd_grad, vsd_after = run_from(VSD, score_model, initial, score_cfg, x0, cond, t, eps)
    lvsd_grad, lvsd_after = run_from(LVSD, score_model, initial, score_cfg, x0, cond, t, eps)
    # the same two AdamW updates of phi, from the same random draws; only the order differs
    for name in initial:
        torch.testing.assert_close(lvsd_after[name], vsd_after[name])
    assert max((vsd_after[n] - initial[n]).abs().max() for n in initial) > 1e-3

    x_t = prior.add_noise(x0, eps, t)
    _, sigma = closed_form_alpha_sigma(prior, t)
    eps_pretrain = prior.predict_eps(x_t, t, cond.text_emb, cond.uncond_emb, 7.5)

    def eps_phi(state):
        score_model.load_trainable_state_dict(state)
        with torch.no_grad():
            return score_model.eps(x_t, t, cond.text_emb, cond.camera)

    torch.testing.assert_close(vsd_grad, sigma**2 * (eps_pretrain - eps_phi(initial)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(lvsd_grad, sigma**2 * (eps_pretrain - eps_phi(vsd_after)), rtol=1e-4, atol=1e-5)
    assert (lvsd_grad - vsd_grad).abs().max() > 1e-4


@pytest.mark.parametrize("entropy_weight", [0.0, 0.5, 1.0])
def test_esd_mixes_the_camera_free_and_camera_predictions(tiny_prior, entropy_weight):
    prior = tiny_prior
    score_cfg = ScoreModelConfig(train_steps=0)  # phi fixed: the gradient is a function of phi alone
    score_model = ScoreModel(prior, score_cfg)
    perturb_trainable(score_model)
    initial = score_model.trainable_state_dict()
    x0, cond, eps = make_batch(prior, 2)
    t = torch.tensor([300, 800])

    esd_grad, _ = run_from(ESD, score_model, initial, score_cfg, x0, cond, t, eps,
                           esd=ESDConfig(entropy_weight=entropy_weight))
    x_t = prior.add_noise(x0, eps, t)
    _, sigma = closed_form_alpha_sigma(prior, t)
    with torch.no_grad():
        eps_pretrain = prior.predict_eps(x_t, t, cond.text_emb, cond.uncond_emb, 7.5)
        any_view = score_model.eps(x_t, t, cond.text_emb, None)  # the zero camera, one sample at a time
        this_view = score_model.eps(x_t, t, cond.text_emb, cond.camera)
    assert (any_view - this_view).abs().max() > 1e-3  # the camera matters to this score model
    mixed = entropy_weight * any_view + (1 - entropy_weight) * this_view
    torch.testing.assert_close(esd_grad, sigma**2 * (eps_pretrain - mixed), rtol=1e-4, atol=1e-5)
    if entropy_weight == 0.0:
        vsd_grad, _ = run_from(VSD, score_model, initial, score_cfg, x0, cond, t, eps)
        torch.testing.assert_close(esd_grad, vsd_grad)


def test_esd_needs_camera_dropout():
    with pytest.raises(ConfigError, match="camera_dropout"):
        build_recipe(None, ["guidance.method=esd", "score_model.camera_dropout=0"])
    with pytest.raises(ConfigError, match="camera_embedding"):
        build_recipe(None, ["texture.guidance.method=esd", "score_model.camera_embedding=false"])
    assert build_recipe(None, ["guidance.method=esd"]).guidance.cfg_scale == 7.5


@pytest.mark.slow
@pytest.mark.parametrize("method", ["l-vsd", "esd", "l2vsd"])
def test_nerf_runs_with_each_vsd_variant(tiny_model_dir, tmp_path, method):
    import json

    out = tmp_path / method
    result = invoke("nerf", "a pineapple", "--recipe", TINY_RECIPE, "--model", str(tiny_model_dir), "--out", str(out),
                    "--method", method, "--steps", "2")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "nerf" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["config"]["guidance"]["method"] == method
    metrics = [json.loads(line) for line in (out / "nerf" / "metrics.jsonl").read_text().splitlines()]
    assert all("lora_loss" in m for m in metrics)


def test_every_shipped_recipe_loads_and_l2vsds_is_the_papers():

    folder = PACKAGE_RECIPES
    recipes = sorted(folder.glob("*.yaml"))
    assert len(recipes) >= 7
    for path in recipes:
        build_recipe(str(path))
    l2vsd = build_recipe(str(folder / "l2vsd.yaml"))
    assert (l2vsd.guidance.method, l2vsd.nerf.steps, l2vsd.guidance.cfg_scale) == ("l2vsd", 10000, 7.5)
    assert build_recipe(str(folder / "toy-2d.yaml")).scene.representation == "image"


def test_l2vsd_logs_its_term_only_for_the_step_that_computed_it(tiny_prior):
    """The lookahead term's norm belongs to the step that made it: a later step without a phi
    update (no gradient to look along) logs none, rather than the previous step's value."""
    import dataclasses

    from prolificli.config import LookaheadConfig
    from prolificli.distill import L2VSD

    score_cfg = ScoreModelConfig(lr=1e-3)
    score_model = ScoreModel(tiny_prior, score_cfg)
    l2vsd = L2VSD(tiny_prior, score_model, GuidanceConfig(cfg_scale=7.5), score_cfg, LookaheadConfig(eta=0.1))
    x0, cond, _ = make_batch(tiny_prior, 1)
    first = l2vsd(x0.clone().requires_grad_(True), cond, step=0, generator=torch.Generator().manual_seed(0))
    assert float(first.logs["lookahead_norm"]) > 0
    l2vsd.score_cfg = dataclasses.replace(score_cfg, train_steps=0)
    second = l2vsd(x0.clone().requires_grad_(True), cond, step=1, generator=torch.Generator().manual_seed(1))
    assert "lookahead_norm" not in second.logs and "lora_loss" not in second.logs
