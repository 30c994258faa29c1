"""The Gaussian example's closed-form scores, and the distillers run on it: with the exact score of
q, VSD must land on the target; SDS must collapse q's covariance (its known mode seeking)."""

from __future__ import annotations

import torch
from torch.distributions import MultivariateNormal

from prolificli.toyworld.gaussian import (GaussianPrior, GaussianScoreModel, Setting, TARGET_COV, TARGET_MU,
                                          ddpm_alphas_cumprod, gaussian_eps, run)


def test_perturbed_score_matches_autograd_of_the_log_density():
    alphas_cumprod = ddpm_alphas_cumprod()
    mu, cov = torch.tensor([0.3, -1.2]), torch.tensor([[0.7, 0.2], [0.2, 0.4]])
    t = torch.tensor([5, 300, 990])
    x_t = torch.randn(3, 2, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    abar = alphas_cumprod[t]
    log_p = sum(MultivariateNormal(abar[i].sqrt() * mu, abar[i] * cov + (1 - abar[i]) * torch.eye(2)).log_prob(x_t[i])
                for i in range(3))
    (score,) = torch.autograd.grad(log_p, x_t)
    expected = -(1 - abar).sqrt()[:, None] * score
    got = gaussian_eps(x_t.detach().view(3, 2, 1, 1), t, alphas_cumprod, mu, cov).view(3, 2)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_the_score_models_diffusion_loss_is_minimised_by_the_data_distribution():
    """Eq. 8 on samples of N(mu, S): the loss at r = N(mu, S) is below the loss at other Gaussians."""
    prior = GaussianPrior(TARGET_MU, TARGET_COV)
    samples = MultivariateNormal(TARGET_MU, TARGET_COV).sample((4096,)).view(-1, 2, 1, 1)
    r = GaussianScoreModel(prior, noise_draws=8)

    def loss_at(mu, L):
        with torch.no_grad():
            r.mu.copy_(mu)
            r.L.copy_(L)
            return float(r.diffusion_loss(samples, None, None, generator=torch.Generator().manual_seed(0)))

    true = loss_at(TARGET_MU, torch.linalg.cholesky(TARGET_COV))
    assert true < loss_at(TARGET_MU + 0.3, torch.linalg.cholesky(TARGET_COV))
    assert true < loss_at(TARGET_MU, 0.5 * torch.linalg.cholesky(TARGET_COV))
    assert true < loss_at(TARGET_MU, 1.5 * torch.linalg.cholesky(TARGET_COV))


FAST = dict(steps=400, batch=16, lr=0.05, cosine_decay=False)


def test_vsd_with_the_exact_score_of_q_converges_to_the_target():
    end, _ = run("vsd, exact q", Setting(**FAST))
    assert end.mean < 0.05 and end.cov < 0.05, end


def test_sds_collapses_the_covariance():
    end, _ = run("sds", Setting(**FAST))
    assert end.mean < 0.2, end
    # ||A A^T - S_p|| close to ||S_p||: nearly all of the spread is gone
    assert end.cov > 0.9 * float(TARGET_COV.norm()), end
