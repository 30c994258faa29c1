"""What several test modules use: the tiny recipe and the CLI runner (test_cli, test_image_mode,
test_variants), random batches for the distillers and the closed-form schedule (test_distill,
test_l2vsd, test_variants)."""

from __future__ import annotations

from pathlib import Path

import torch
from typer.testing import CliRunner

from prolificli.cli import app
from prolificli.distill import Conditioning, ScoreModel
from prolificli.recipe_files import PACKAGE_RECIPES

TINY_RECIPE = str(PACKAGE_RECIPES / "tiny.yaml")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    # progress/log lines may come first; the error is the last line, and the only one
    assert lines and lines[-1].startswith("error:"), result.stderr
    assert sum(line.startswith("error:") for line in lines) == 1
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    text = " ".join(result.stderr.split())
    for fragment in fragments:
        assert fragment in text, text


def nerf_args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["nerf", "an elephant skull", "--model", str(model_dir), "--recipe", TINY_RECIPE, "--out", str(out), *extra]


def closed_form_alpha_sigma(prior, t):
    alphabar = torch.cumprod(1.0 - prior.scheduler.betas.double(), dim=0)[t]
    alpha = alphabar.sqrt().float().view(-1, 1, 1, 1)
    sigma = (1.0 - alphabar).sqrt().float().view(-1, 1, 1, 1)
    return alpha, sigma


def make_batch(prior, batch: int, seed: int = 0):
    """Random model-space renders, prompt embeddings and cameras shaped for the prior's UNet."""
    g = torch.Generator().manual_seed(seed)
    config = prior.unet.config
    x0 = torch.randn(batch, config.in_channels, config.sample_size, config.sample_size, generator=g)
    text = torch.randn(batch, 8, config.cross_attention_dim, generator=g)
    uncond = torch.randn(batch, 8, config.cross_attention_dim, generator=g)
    camera = torch.randn(batch, 16, generator=g)
    eps = torch.randn(x0.shape, generator=g)
    return x0, Conditioning(text_emb=text, uncond_emb=uncond, camera=camera), eps


def perturb_trainable(score_model: ScoreModel, seed: int = 1, scale: float = 0.2) -> None:
    """Make LoRA B and the camera MLP's last layer non-zero so the score model differs from its base."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in score_model.trainable_parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
