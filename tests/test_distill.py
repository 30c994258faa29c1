"""Distillation math against independent computations on the tiny random prior.

The expected values are built here from plain UNet calls and the closed-form alphabar_t =
prod_{s<=t} (1 - beta_s) of the scheduler's betas, never from the code under test.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from prolificli.config import ConfigError, GuidanceConfig, PriorConfig, ScoreModelConfig
from prolificli.distill import SDS, VSD, Conditioning, ScoreModel, TimestepSchedule, surrogate_loss, weight
from helpers import closed_form_alpha_sigma, make_batch, perturb_trainable
from prolificli.prior import load_prior

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def cfg_eps_reference(unet, x_t, t, cond: Conditioning, scale: float):
    """Classifier-free guidance from two separate plain calls of an epsilon-predicting UNet."""
    with torch.no_grad():
        eps_c = unet(x_t, t, encoder_hidden_states=cond.text_emb).sample
        eps_u = unet(x_t, t, encoder_hidden_states=cond.uncond_emb).sample
    return eps_u + scale * (eps_c - eps_u)


# ---------------------------------------------------------------------------------------------
# surrogate loss, schedule, weighting
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3, 4])
def test_surrogate_loss_gradient_is_grad_over_batch(batch):
    g = torch.Generator().manual_seed(batch)
    x0 = (10 * torch.randn(batch, 4, 5, 5, generator=g)).requires_grad_(True)
    grad = 1e-3 * torch.randn(batch, 4, 5, 5, generator=g)
    loss = surrogate_loss(x0, grad)
    loss.backward()
    assert torch.equal(x0.grad, grad / batch)
    torch.testing.assert_close(loss, 0.5 * (grad**2).sum() / batch)
    # the same gradient as the textbook expression, up to its rounding at the scale of |x0|
    x1 = x0.detach().clone().requires_grad_(True)
    (0.5 * ((x1 - (x1 - grad).detach()) ** 2).sum() / batch).backward()
    torch.testing.assert_close(x1.grad, grad / batch, rtol=0, atol=1e-5)


def test_surrogate_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        surrogate_loss(torch.zeros(1, 4, 8, 8, requires_grad=True), torch.zeros(1, 4, 8, 9))


def test_schedule_two_stage_anneal():
    cfg = GuidanceConfig(t_min=0.02, t_max=0.98, t_max_annealed=0.5, anneal_step=100)
    schedule = TimestepSchedule(cfg, num_train_timesteps=1000)
    assert schedule.t_range(0) == (20, 980)
    assert schedule.t_range(99) == (20, 980)
    assert schedule.t_range(100) == (20, 500)
    assert schedule.t_range(10_000) == (20, 500)
    g = torch.Generator().manual_seed(0)
    for step, (low, high) in [(0, (20, 980)), (100, (20, 500))]:
        t = schedule.sample(step, 20_000, generator=g)
        assert t.dtype == torch.long and t.shape == (20_000,)
        assert int(t.min()) == low and int(t.max()) == high  # inclusive at both ends
        # uniform: each half of the range gets about half the draws
        middle = (low + high) / 2
        assert abs((t < middle).float().mean().item() - 0.5) < 0.02


def test_schedule_rejects_empty_range():
    with pytest.raises(ValueError):
        TimestepSchedule(GuidanceConfig(t_min=0.6, t_max_annealed=0.5), num_train_timesteps=1000)


def test_weight_is_sigma_squared(tiny_prior):
    t = torch.tensor([0, 20, 500, 999])
    _, sigma = closed_form_alpha_sigma(tiny_prior, t)
    torch.testing.assert_close(weight(tiny_prior, t, "sigma2"), sigma**2)
    assert torch.equal(weight(tiny_prior, t, "uniform"), torch.ones(4, 1, 1, 1))
    with pytest.raises(ValueError):
        weight(tiny_prior, t, "snr")


# ---------------------------------------------------------------------------------------------
# SDS
# ---------------------------------------------------------------------------------------------


def test_sds_gradient_matches_independent_computation(tiny_prior):
    prior = tiny_prior
    assert prior.prediction_type == "epsilon"
    batch = 2
    x0, cond, eps = make_batch(prior, batch)
    t = torch.tensor([137, 812])
    cfg = GuidanceConfig(cfg_scale=7.5)

    alpha, sigma = closed_form_alpha_sigma(prior, t)
    x_t = alpha * x0 + sigma * eps
    expected = sigma**2 * (cfg_eps_reference(prior.unet, x_t, t, cond, 7.5) - eps)

    x0 = x0.clone().requires_grad_(True)
    out = SDS(prior, cfg)(x0, cond, step=0, t=t, eps=eps)
    torch.testing.assert_close(out.grad, expected, rtol=1e-4, atol=1e-5)
    out.loss.backward()
    torch.testing.assert_close(x0.grad, expected / batch, rtol=1e-4, atol=1e-5)
    # no graph through the UNet: the returned gradient is a leaf and no UNet weight saw a gradient
    assert out.grad.grad_fn is None and not out.grad.requires_grad
    assert all(p.grad is None for p in prior.unet.parameters())
    assert out.logs["t"] == pytest.approx((137 + 812) / 2)
    assert out.logs["grad_norm"] > 0


def test_sds_draws_t_from_the_schedule(tiny_prior):
    x0, cond, _ = make_batch(tiny_prior, 1)
    sds = SDS(tiny_prior, GuidanceConfig(t_min=0.3, t_max=0.31, anneal_step=10, cfg_scale=100.0))
    g = torch.Generator().manual_seed(0)
    ts = [sds(x0.clone().requires_grad_(True), cond, step=0, generator=g).logs["t"] for _ in range(4)]
    assert all(300 <= t <= 310 for t in ts)


# ---------------------------------------------------------------------------------------------
# score model and VSD
# ---------------------------------------------------------------------------------------------


def expected_lora_modules(unet, targets: str) -> set[str]:
    """The layers a named target set means, found by module class (not by name, as the code does)."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    names = {module: name for name, module in unet.named_modules()}
    wanted = set()
    for module, name in names.items():
        if isinstance(module, Attention):
            wanted |= {names[module.to_q], names[module.to_k], names[module.to_v], names[module.to_out[0]]}
        if targets == "attention+resnet" and isinstance(module, ResnetBlock2D):
            wanted |= {names[module.conv1], names[module.conv2], names[module.time_emb_proj]}
    return wanted


def lora_modules(unet) -> set[str]:
    return {name for name, module in unet.named_modules() if hasattr(module, "lora_A") and len(module.lora_A)}


@pytest.mark.parametrize("targets", ["attention", "attention+resnet", "list"])
def test_lora_lands_on_exactly_the_named_modules(tiny_prior, targets):
    if targets == "list":
        chosen = ["down_blocks.0.resnets.0.conv1", "mid_block.attentions.0.proj_in"]
        ScoreModel(tiny_prior, ScoreModelConfig(lora_targets=chosen))
        assert lora_modules(tiny_prior.unet) == set(chosen)
        return
    ScoreModel(tiny_prior, ScoreModelConfig(lora_targets=targets))
    got = lora_modules(tiny_prior.unet)
    assert got == expected_lora_modules(tiny_prior.unet, targets)
    convolutions = {n for n in got if isinstance(tiny_prior.unet.get_submodule(n).base_layer, torch.nn.Conv2d)}
    assert bool(convolutions) == (targets == "attention+resnet")


def test_a_second_score_model_on_a_reused_prior_lands_on_the_same_modules(tiny_prior):
    """A batch detaches one prompt's score model and attaches the next to the same UNet, whose
    layers peft has wrapped by then."""
    first = ScoreModel(tiny_prior, ScoreModelConfig(lora_targets="attention+resnet"))
    first.shared.detach_score_model()
    ScoreModel(tiny_prior, ScoreModelConfig(lora_targets="attention+resnet"))
    assert lora_modules(tiny_prior.unet) == expected_lora_modules(tiny_prior.unet, "attention+resnet")


def test_unknown_lora_targets_are_config_errors(tiny_prior):
    with pytest.raises(ConfigError, match="attention\\+resnet"):
        ScoreModel(tiny_prior, ScoreModelConfig(lora_targets="resnet"))
    with pytest.raises(ConfigError, match="no.such.layer"):
        ScoreModel(tiny_prior, ScoreModelConfig(lora_targets=["no.such.layer"]))


@pytest.mark.parametrize("targets", ["attention", "attention+resnet"])
def test_score_model_starts_as_its_base(tiny_prior, targets):
    """Zero LoRA B and zero camera last layer: eps_phi equals the base UNet's conditional eps."""
    pristine = copy.deepcopy(tiny_prior.unet)
    score_model = ScoreModel(tiny_prior, ScoreModelConfig(prediction_type="epsilon", lora_targets=targets))
    x0, cond, eps = make_batch(tiny_prior, 2)
    t = torch.tensor([250, 700])
    with torch.no_grad():
        got = score_model.eps(x0, t, cond.text_emb, cond.camera)
        expected = pristine(x0, t, encoder_hidden_states=cond.text_emb).sample
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_only_lora_and_camera_are_trainable(tiny_prior, tiny_model_dir):
    score_model = ScoreModel(tiny_prior, ScoreModelConfig())
    names = set(score_model.trainable_state_dict())
    assert names == {n for n, p in tiny_prior.unet.named_parameters() if p.requires_grad}
    assert names and all(("lora_" in n) or n.startswith("class_embedding.") for n in names)
    assert any(n.startswith("class_embedding.") for n in names)
    assert not any(p.requires_grad for p in tiny_prior.text_encoder.parameters())
    assert not any(p.requires_grad for p in tiny_prior.vae.parameters())
    assert all(p.dtype == torch.float32 for p in score_model.trainable_parameters())

    other_prior = load_prior(PriorConfig(model=str(tiny_model_dir), device="cpu", dtype="float32"))
    without_camera = ScoreModel(other_prior, ScoreModelConfig(camera_embedding=False))
    assert without_camera.unet.class_embedding is None
    assert all("lora_" in n for n in without_camera.trainable_state_dict())


@pytest.mark.parametrize("targets", ["attention", "attention+resnet"])
def test_prior_pass_runs_without_adapters(tiny_prior, targets):
    prior = tiny_prior
    pristine = copy.deepcopy(prior.unet)
    x0, cond, eps = make_batch(prior, 2)
    t = torch.tensor([300, 600])
    x_t = prior.add_noise(x0, eps, t)
    before = prior.predict_eps(x_t, t, cond.text_emb, cond.uncond_emb, 7.5)  # no adapters yet
    score_model = ScoreModel(prior, ScoreModelConfig(lora_targets=targets))
    perturb_trainable(score_model)

    got = prior.predict_eps(x_t, t, cond.text_emb, cond.uncond_emb, 7.5)
    # the same pass as before the adapters came: to the last bit
    torch.testing.assert_close(got, before, rtol=0, atol=0)
    # and CFG as two plain calls of the base UNet: the prior's pass batches both, so the float
    # sums run in another order, a rounding error that CFG multiplies (1.3e-5 measured after CFG 7.5)
    expected = cfg_eps_reference(pristine, x_t, t, cond, 7.5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)

    # and the adapted UNet really is different, so the comparison above could have failed
    with torch.no_grad():
        adapted = prior.unet(x_t, t, encoder_hidden_states=cond.text_emb, class_labels=cond.camera).sample
        plain = pristine(x_t, t, encoder_hidden_states=cond.text_emb).sample
    assert (adapted - plain).abs().max() > 1e-2



def test_each_pass_asks_for_its_network_whatever_the_last_call_left(tiny_prior):
    """The prior's and the score model's passes give the same answers whichever ran before, and
    even after someone switched the shared UNet by hand."""
    prior = tiny_prior
    score_model = ScoreModel(prior, ScoreModelConfig())
    perturb_trainable(score_model)
    x0, cond, eps = make_batch(prior, 2)
    t = torch.tensor([300, 600])
    x_t = prior.add_noise(x0, eps, t)
    with torch.no_grad():
        score = score_model(x_t, t, cond.text_emb, cond.camera)
        guided = prior.predict_eps(x_t, t, cond.text_emb, cond.uncond_emb, 7.5)
        prior.unet.disable_adapters()  # the state the prior's pass needs, left behind
        prior.unet.class_embedding = None
        torch.testing.assert_close(score_model(x_t, t, cond.text_emb, cond.camera), score)
        torch.testing.assert_close(prior.predict_eps(x_t, t, cond.text_emb, cond.uncond_emb, 7.5), guided)
        torch.testing.assert_close(score_model.eps(x_t, t, cond.text_emb, cond.camera), score)
    assert all(p.requires_grad for p in score_model.trainable_parameters())


def test_a_second_score_model_on_one_prior_is_an_error(tiny_prior):
    ScoreModel(tiny_prior, ScoreModelConfig())
    with pytest.raises(ValueError, match="already carries a score model"):
        ScoreModel(tiny_prior, ScoreModelConfig(lora_rank=2))

def test_vsd_gradient_matches_independent_computation(tiny_prior):
    prior = tiny_prior
    pristine = copy.deepcopy(prior.unet)
    score_cfg = ScoreModelConfig(prediction_type="v_prediction")
    score_model = ScoreModel(prior, score_cfg)
    perturb_trainable(score_model)
    vsd = VSD(prior, score_model, GuidanceConfig(cfg_scale=7.5), score_cfg)

    batch = 2
    x0, cond, eps = make_batch(prior, batch)
    t = torch.tensor([90, 640])
    alpha, sigma = closed_form_alpha_sigma(prior, t)
    x_t = alpha * x0 + sigma * eps
    eps_cfg = cfg_eps_reference(pristine, x_t, t, cond, 7.5)
    prior.unet.enable_adapters()
    with torch.no_grad():
        v_lora = prior.unet(x_t, t, encoder_hidden_states=cond.text_emb, class_labels=cond.camera).sample
    eps_lora = alpha * v_lora + sigma * x_t
    expected = sigma**2 * (eps_cfg - eps_lora)
    assert (eps_lora - pristine(x_t, t, encoder_hidden_states=cond.text_emb).sample).abs().max() > 1e-2

    x0 = x0.clone().requires_grad_(True)
    out = vsd(x0, cond, step=0, t=t, eps=eps, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.grad, expected, rtol=1e-4, atol=1e-5)
    out.loss.backward()
    torch.testing.assert_close(x0.grad, expected / batch, rtol=1e-4, atol=1e-5)
    assert out.grad.grad_fn is None and not out.grad.requires_grad
    assert set(out.logs) == {"t", "grad_norm", "lora_loss"}


def test_vsd_uses_the_plain_prompt_for_the_score_model(tiny_prior):
    """score_text_emb (y) goes to eps_phi, text_emb (y^c) to the prior (Eq. 9)."""
    prior = tiny_prior
    score_cfg = ScoreModelConfig(train_steps=0)
    score_model = ScoreModel(prior, score_cfg)
    perturb_trainable(score_model)
    vsd = VSD(prior, score_model, GuidanceConfig(cfg_scale=7.5), score_cfg)
    x0, cond, eps = make_batch(prior, 1)
    plain = torch.randn(cond.text_emb.shape, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([400])
    with_plain = vsd(x0, dataclasses.replace(cond, score_text_emb=plain), step=0, t=t, eps=eps).grad
    x_t = prior.add_noise(x0, eps, t)
    with torch.no_grad():
        eps_pretrain = prior.predict_eps(x_t, t, cond.text_emb, cond.uncond_emb, 7.5)
        eps_phi = score_model.eps(x_t, t, plain, cond.camera)
    _, sigma = closed_form_alpha_sigma(prior, t)
    torch.testing.assert_close(with_plain, sigma**2 * (eps_pretrain - eps_phi), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(with_plain, vsd(x0, cond, step=0, t=t, eps=eps).grad)


def test_vsd_step_changes_only_lora_and_camera(tiny_prior):
    prior = tiny_prior
    score_cfg = ScoreModelConfig(lr=1e-3)
    score_model = ScoreModel(prior, score_cfg)
    vsd = VSD(prior, score_model, GuidanceConfig(cfg_scale=7.5), score_cfg)
    modules = {"unet": prior.unet, "vae": prior.vae, "text_encoder": prior.text_encoder}
    before = {
        (m, n): p.detach().clone() for m, module in modules.items() for n, p in module.named_parameters()
    }
    x0, cond, _ = make_batch(prior, 1)
    vsd(x0.requires_grad_(True), cond, step=0, generator=torch.Generator().manual_seed(0))

    after = {(m, n): p for m, module in modules.items() for n, p in module.named_parameters()}
    assert before.keys() == after.keys()
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    trainable = {("unet", n) for n in score_model.trainable_state_dict()}
    assert changed and changed <= trainable
    assert any("lora_B" in n for _, n in changed)  # zero at the start, moved by the first step
    assert any(n.startswith("class_embedding.2.") for _, n in changed)


def test_diffusion_loss_matches_independent_computation(tiny_prior):
    prior = tiny_prior
    score_model = ScoreModel(prior, ScoreModelConfig(prediction_type="v_prediction", camera_dropout=0.0))
    perturb_trainable(score_model)
    x0, cond, eps = make_batch(prior, 2)
    t = torch.tensor([5, 990])
    alpha, sigma = closed_form_alpha_sigma(prior, t)
    x_t = alpha * x0 + sigma * eps
    with torch.no_grad():
        v_pred = prior.unet(x_t, t, encoder_hidden_states=cond.text_emb, class_labels=cond.camera).sample
        expected = ((v_pred - (alpha * eps - sigma * x0)) ** 2).mean()
        got = score_model.diffusion_loss(x0, cond.text_emb, cond.camera, t=t, eps=eps)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_camera_dropout_replaces_the_camera_with_zeros(tiny_prior):
    prior = tiny_prior
    score_model = ScoreModel(prior, ScoreModelConfig(camera_dropout=1.0))
    perturb_trainable(score_model)
    x0, cond, eps = make_batch(prior, 2)
    t = torch.tensor([100, 500])
    zeros = torch.zeros_like(cond.camera)

    def loss(camera, seed=3):
        with torch.no_grad():
            return score_model.diffusion_loss(
                x0, cond.text_emb, camera, t=t, eps=eps, generator=torch.Generator().manual_seed(seed)
            )

    assert torch.equal(loss(cond.camera), loss(zeros))
    assert torch.equal(loss(None), loss(zeros))
    score_model.cfg = dataclasses.replace(score_model.cfg, camera_dropout=0.0)
    assert not torch.allclose(loss(cond.camera), loss(zeros))  # the camera does matter when kept


def test_vsd_state_dict_round_trip(tiny_prior, tiny_model_dir):
    score_cfg = ScoreModelConfig(lr=1e-3)
    guidance = GuidanceConfig(cfg_scale=7.5)
    x0, cond, _ = make_batch(tiny_prior, 1)

    def gen(seed):
        return torch.Generator().manual_seed(seed)

    score_model = ScoreModel(tiny_prior, score_cfg)
    vsd = VSD(tiny_prior, score_model, guidance, score_cfg)
    for seed in range(2):
        vsd(x0, cond, step=seed, generator=gen(seed))
    state = copy.deepcopy(vsd.state_dict())
    next_grads = [vsd(x0, cond, step=seed, generator=gen(seed)).grad for seed in (2, 3)]

    fresh_prior = load_prior(PriorConfig(model=str(tiny_model_dir), device="cpu", dtype="float32"))
    fresh = VSD(fresh_prior, ScoreModel(fresh_prior, score_cfg), guidance, score_cfg)
    assert not torch.equal(fresh(x0, cond, step=2, generator=gen(2)).grad, next_grads[0])
    fresh.load_state_dict(state)
    # the first grad needs the LoRA/camera weights, the second also the optimizer's moments
    for seed, expected in zip((2, 3), next_grads):
        assert torch.equal(fresh(x0, cond, step=seed, generator=gen(seed)).grad, expected)


def test_separate_base_unet_leaves_the_prior_untouched(tiny_prior, tiny_model_dir):
    prior = tiny_prior
    score_model = ScoreModel(prior, ScoreModelConfig(base=str(tiny_model_dir), prediction_type="epsilon"))
    assert score_model.unet is not prior.unet
    assert not getattr(prior.unet, "_hf_peft_config_loaded", False) and prior.unet.class_embedding is None
    assert not any(p.requires_grad for n, p in score_model.unet.named_parameters() if "lora_" not in n
                   and not n.startswith("class_embedding."))
    x0, cond, _ = make_batch(prior, 1)
    t = torch.tensor([321])
    with torch.no_grad():  # same weights on disk, zero-initialised LoRA and camera: same prediction
        expected = prior.unet(x0, t, encoder_hidden_states=cond.text_emb).sample
        torch.testing.assert_close(score_model.eps(x0, t, cond.text_emb, cond.camera), expected)


def test_vsd_on_a_pixel_prior(tiny_pixel_model_dir):
    prior = load_prior(PriorConfig(model=str(tiny_pixel_model_dir), device="cpu", dtype="float32"))
    score_cfg = ScoreModelConfig()
    vsd = VSD(prior, ScoreModel(prior, score_cfg), GuidanceConfig(cfg_scale=7.5), score_cfg)
    rgb = torch.rand(1, 3, 32, 32, requires_grad=True)
    x0 = prior.encode_images(rgb)
    _, cond, _ = make_batch(prior, 1)
    out = vsd(x0, cond, step=0, generator=torch.Generator().manual_seed(0))
    assert out.grad.shape == (1, 3, 32, 32)
    out.loss.backward()
    assert rgb.grad is not None and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0


def test_mixed_precision_keeps_trainable_parameters_in_float32(tiny_model_dir):
    prior = load_prior(PriorConfig(model=str(tiny_model_dir), device="cpu", dtype="float16"))
    score_cfg = ScoreModelConfig(lr=1e-2)
    score_model = ScoreModel(prior, score_cfg)
    assert prior.unet.conv_in.weight.dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in score_model.trainable_parameters())
    before = score_model.trainable_state_dict()
    x0, cond, _ = make_batch(prior, 1)
    vsd = VSD(prior, score_model, GuidanceConfig(cfg_scale=7.5), score_cfg)
    out = vsd(x0, cond, step=0, generator=torch.Generator().manual_seed(0))
    assert out.grad.dtype == torch.float32 and torch.isfinite(out.grad).all()
    after = score_model.trainable_state_dict()
    assert any(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)


@pytest.mark.parametrize("base", ["missing-dir", "someone/not-cached-model"])
def test_missing_score_model_base_is_a_one_line_error(tiny_prior, tmp_path, monkeypatch, base):
    from prolificli.prior import PriorLoadError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub id not in the cache must fail at once
    name = str(tmp_path / base) if base == "missing-dir" else base
    with pytest.raises(PriorLoadError) as info:
        ScoreModel(tiny_prior, ScoreModelConfig(base=name))
    assert "\n" not in str(info.value) and name in str(info.value)


def test_a_detached_score_model_leaves_the_pretrained_unet_for_the_next(tiny_prior):
    """A batch reuses one prior across prompts: after detaching, the UNet is the pretrained one
    and a new score model attaches as to a fresh prior."""
    x0, cond, eps = make_batch(tiny_prior, 2)
    t = torch.tensor([300, 600])
    x_t = tiny_prior.add_noise(x0, eps, t)
    with torch.no_grad():
        before = tiny_prior.unet(x_t, t, encoder_hidden_states=cond.text_emb).sample
    first = ScoreModel(tiny_prior, ScoreModelConfig())
    perturb_trainable(first)
    tiny_prior.shared_unet.detach_score_model()
    with torch.no_grad():
        torch.testing.assert_close(tiny_prior.unet(x_t, t, encoder_hidden_states=cond.text_emb).sample, before)
    second = ScoreModel(tiny_prior, ScoreModelConfig(prediction_type="epsilon"))
    with torch.no_grad():  # zero LoRA B and zero camera layer again: it starts as the base UNet
        torch.testing.assert_close(second.eps(x_t, t, cond.text_emb, cond.camera), before, rtol=1e-5, atol=1e-6)
    assert all(p.requires_grad for p in second.trainable_parameters())
