"""The prior in half precision, as on CUDA (prior.dtype float16 there by default), on this CPU:
the UNet, VAE and text encoder in bfloat16 or float16, the LoRA, camera MLP, field and renderer in
float32. One whole NeRF step per method (VSD, and L2-VSD for its jvp through the half UNet): the
losses are finite, the field's gradient is close to the same step's in float32, and the LoRA
(kept in float32) is updated. Then a short run of the tiny recipe completes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from prolificli.recipe_files import PACKAGE_RECIPES
from prolificli.methods import build_distiller, build_recipe
from prolificli.optimize import optimization_step
from prolificli.prior import load_prior
from prolificli.stages.nerf import NeRFParticles

HALF = ["bfloat16", "float16"]


def one_step(model_dir: Path, dtype: str, method: str) -> dict:
    recipe = build_recipe(str(PACKAGE_RECIPES / "tiny.yaml"),
                          [f"prior.model={model_dir}", "prior.device=cpu", f"prior.dtype={dtype}",
                           f"guidance.method={method}"])
    prior = load_prior(recipe.prior)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    particles = NeRFParticles(recipe, prior, "an elephant skull", generator)
    distiller = build_distiller(recipe.guidance, recipe, prior)
    lora_before = {k: v.clone() for k, v in distiller.state_dict().tensors.items()}
    optimizer = particles.optimizers[0]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    captured = {}
    real_step = optimizer.step

    def capture_then_step(*args, **kwargs):  # the field's gradient as the AdamW step sees it
        captured["grad"] = torch.cat([p.grad.flatten() for p in params if p.grad is not None])
        return real_step(*args, **kwargs)

    optimizer.step = capture_then_step
    logs = optimization_step(particles, prior.encode_images, distiller, 0, generator)
    lora_after = distiller.state_dict().tensors
    return {"prior": prior, "loss": float(logs["loss"]), "lora_loss": float(logs.get("lora_loss", "nan")),
            "field_grad": captured["grad"], "params": params,
            "lora_dtypes": {v.dtype for v in lora_after.values()},
            "lora_moved": sum(not torch.equal(lora_before[k], lora_after[k]) for k in lora_before),
            "lora_tensors": len(lora_before), "lora_finite": all(torch.isfinite(v).all() for v in lora_after.values())}


@pytest.mark.parametrize("method", ["vsd", "l2vsd"])
@pytest.mark.parametrize("dtype", HALF)
def test_a_nerf_step_with_a_half_precision_prior(tiny_model_dir: Path, dtype: str, method: str) -> None:
    reference = one_step(tiny_model_dir, "float32", method)
    half = one_step(tiny_model_dir, dtype, method)
    prior = half["prior"]
    assert {prior.unet.dtype, prior.vae.dtype, prior.text_encoder.dtype} == {getattr(torch, dtype)}
    assert all(p.dtype == torch.float32 for p in half["params"])  # field and background
    assert half["lora_dtypes"] == {torch.float32}
    assert math.isfinite(half["loss"]) and math.isfinite(half["lora_loss"])
    assert half["lora_finite"] and half["lora_moved"] == half["lora_tensors"] > 0  # every LoRA/camera tensor stepped
    grad, grad32 = half["field_grad"], reference["field_grad"]
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    cosine = torch.nn.functional.cosine_similarity(grad.double(), grad32.double(), dim=0)
    assert cosine > 0.98, f"{dtype} field gradient against float32: cosine {cosine:.4f}"
    assert abs(half["loss"] - reference["loss"]) < 0.05 * abs(reference["loss"])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", HALF)
def test_a_short_tiny_run_with_a_half_precision_prior(tiny_model_dir: Path, tmp_path: Path, dtype: str) -> None:
    from prolificli.stages import nerf

    recipe = build_recipe(str(PACKAGE_RECIPES / "tiny.yaml"),
                          [f"prior.model={tiny_model_dir}", "prior.device=cpu", f"prior.dtype={dtype}"])
    result = nerf.run(tmp_path / "run", recipe, prompt="an elephant skull")
    assert result.status == "complete" and result.step == recipe.nerf.steps
    metrics = [line for line in (tmp_path / "run" / "nerf" / "metrics.jsonl").read_text().splitlines() if line]
    import json

    records = [json.loads(line) for line in metrics]
    assert len(records) == recipe.nerf.steps
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["lora_loss"]) for r in records)
