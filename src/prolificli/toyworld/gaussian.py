"""The L2-VSD paper's Gaussian example (Sec. 3.2, App. A and F): every score in closed form.

The target ("pretrained") distribution is p = N(mu_p, S_p) in R^2; theta = (m, A) is a generator
x = m + A c, c ~ N(0, I), so q_theta = N(m, A A^T); the score model r = N(mu_r, L L^T) is a
Gaussian fitted to the samples by the same diffusion loss (Eq. 8) that trains VSD's LoRA. A
Gaussian's perturbed score is exact:

    x_t = alpha_t x + sigma_t eps,   grad log p_t(x_t) = -(alpha_t^2 S + sigma_t^2 I)^-1 (x_t - alpha_t mu)
    eps(x_t) = -sigma_t grad log p_t(x_t)

The pieces are shaped like the real ones (samples are [B,2,1,1] "images"; the prior has
`predict_eps`, the score model `eps`/`diffusion_loss`/`forward`), so SDS, VSD, L-VSD and L2-VSD
run here unchanged, through the same `optimization_step` as the stages. What is measured is how
far q_theta ends from p: |m - mu_p| and ||A A^T - S_p||_F.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import GuidanceConfig, LookaheadConfig, Recipe, ScoreModelConfig
from ..distill import VSD, Conditioning
from ..distill.base import sample_noise, sample_timesteps
from ..methods import METHODS, build_distiller
from ..optimize import Rendered, View, optimization_step

DIM = 2


def ddpm_alphas_cumprod(steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    return torch.cumprod(1.0 - torch.linspace(beta_start, beta_end, steps, dtype=torch.float64), 0).float()


def gaussian_eps(x_t: Tensor, t: Tensor, alphas_cumprod: Tensor, mu: Tensor, cov: Tensor) -> Tensor:
    """eps = -sigma_t grad log N(alpha_t mu, alpha_t^2 cov + sigma_t^2 I)(x_t); x_t [B,2,1,1]."""
    abar = alphas_cumprod[t]
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    x = x_t.reshape(-1, DIM)
    marginal = alpha[:, None, None] ** 2 * cov + (sigma**2)[:, None, None] * torch.eye(DIM)
    centred = (x - alpha[:, None] * mu)[..., None]
    eps = sigma[:, None] * torch.linalg.solve(marginal, centred)[..., 0]
    return eps.reshape(x_t.shape)


class GaussianPrior:
    """p = N(mu, cov) as a frozen diffusion prior (no text: the conditional is the unconditional)."""

    def __init__(self, mu: Tensor, cov: Tensor, num_train_timesteps: int = 1000):
        self.mu, self.cov = mu, cov
        self.num_train_timesteps = num_train_timesteps
        self.alphas_cumprod = ddpm_alphas_cumprod(num_train_timesteps)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return abar.sqrt(), (1 - abar).sqrt()

    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = self.alpha_sigma(t)
        return alpha * x0 + sigma * eps

    def predict_eps(self, x_t: Tensor, t: Tensor, cond_emb: Tensor, uncond_emb: Tensor, guidance_scale: float) -> Tensor:
        return gaussian_eps(x_t, t, self.alphas_cumprod, self.mu, self.cov)


class GaussianScoreModel(nn.Module):
    """r = N(mu_r, L L^T), trained like the LoRA: Eq. 8's epsilon-prediction loss on the samples."""

    def __init__(self, prior: GaussianPrior, noise_draws: int = 1):
        super().__init__()
        self.prior = prior
        self.noise_draws = noise_draws  # (t, eps) pairs per sample in the loss: less noise from the loss itself
        self.mu = nn.Parameter(torch.zeros(DIM))
        self.L = nn.Parameter(torch.eye(DIM))

    def cov(self) -> Tensor:
        return self.L @ self.L.T

    def forward(self, x_t: Tensor, t: Tensor, text_emb: Tensor, camera: Tensor | None) -> Tensor:
        return gaussian_eps(x_t, t, self.prior.alphas_cumprod, self.mu, self.cov())

    def eps(self, x_t: Tensor, t: Tensor, text_emb: Tensor, camera: Tensor | None) -> Tensor:
        return self(x_t, t, text_emb, camera)

    def prepare(self) -> None:  # a network of its own: nothing shared to switch
        pass

    def trainable_items(self) -> dict[str, nn.Parameter]:
        return dict(self.named_parameters())

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def diffusion_loss(self, x0: Tensor, text_emb: Tensor, camera: Tensor | None, *,
                       generator: torch.Generator | None = None) -> Tensor:
        x0 = x0.detach().repeat(self.noise_draws, 1, 1, 1)
        t = sample_timesteps(0, self.prior.num_train_timesteps - 1, x0.shape[0], x0.device, generator)
        eps = sample_noise(x0, generator)
        return F.mse_loss(self.eps(self.prior.add_noise(x0, eps, t), t, text_emb, camera), eps)


class GaussianParticle:
    """theta = (m, A): x = m + A c, c ~ N(0, I), so q_theta = N(m, A A^T); `batch` samples per step."""

    n_particles = 1

    def __init__(self, m: Tensor, A: Tensor, lr: float, batch: int, generator: torch.Generator):
        self.m, self.A = nn.Parameter(m.clone()), nn.Parameter(A.clone())
        self.batch, self.generator = batch, generator
        self.adam = torch.optim.Adam([self.m, self.A], lr=lr)
        empty = torch.zeros(batch, 1, 1)
        self.cond = Conditioning(text_emb=empty, uncond_emb=empty, camera=torch.zeros(batch, 16))

    def sample_view(self, step: int) -> View:
        return View(cameras=None, cond=self.cond, resolution=1)

    def render(self, particle: int, view: View, step: int) -> Rendered:
        c = torch.randn(self.batch, DIM, generator=self.generator)
        return Rendered(image=(self.m + c @ self.A.T).view(self.batch, DIM, 1, 1), space="prior")

    def regularization(self, rendered: Rendered, step: int) -> tuple[Tensor, dict[str, float]]:
        return torch.zeros(()), {}

    def optimizer(self, particle: int) -> torch.optim.Optimizer:
        return self.adam

    def after_step(self, step: int) -> dict[str, float]:
        return {}

    def cov(self) -> Tensor:
        return (self.A @ self.A.T).detach()


@dataclass
class Distance:
    mean: float  # |m - mu_p|
    cov: float  # ||A A^T - S_p||_F


def distance(particle: GaussianParticle, prior: GaussianPrior) -> Distance:
    return Distance(float((particle.m.detach() - prior.mu).norm()), float((particle.cov() - prior.cov).norm()))


# ----------------------------------------------------------------------------------------------
# the experiment
# ----------------------------------------------------------------------------------------------

TARGET_MU = torch.tensor([1.0, -0.5])
TARGET_COV = torch.tensor([[1.0, 0.6], [0.6, 0.8]])


@dataclass
class Setting:
    steps: int = 2000
    batch: int = 1  # samples of q per step (one render per step, as in ProlificDreamer)
    lr: float = 0.01  # Adam on theta
    score_lr: float = 0.05  # AdamW on r
    noise_draws: int = 1  # (t, eps) pairs per sample in r's diffusion loss
    cosine_decay: bool = True  # theta's learning rate to zero over the run
    start_offset: tuple[float, float] = (4.0, 3.0)  # q starts at mu_p + offset with A = 0.5 I
    seed: int = 0


def method_distiller(name: str, prior: GaussianPrior, particle: GaussianParticle, setting: Setting):
    """The distiller a method name stands for, from the method table, on a fresh r = N(0, I):
    "vsd", "sds", "l2vsd, eta=E", "l-vsd, gamma=K", or "vsd, exact q" (this example's reference)."""
    base, _, option = (part.strip() for part in name.partition(","))
    score_cfg = ScoreModelConfig(lr=setting.score_lr, train_steps=1)
    lookahead = LookaheadConfig(eta=setting.score_lr)
    if option.startswith("gamma=") and base == "l-vsd":
        score_cfg = ScoreModelConfig(lr=setting.score_lr, train_steps=int(option.split("=")[1]))
    elif option.startswith("eta=") and base == "l2vsd":
        lookahead = LookaheadConfig(eta=float(option.split("=")[1]))
    elif option and name != "vsd, exact q":
        raise ValueError(f"unknown method {name!r}")
    guidance = GuidanceConfig(method=base, cfg_scale=1.0, anneal_step=setting.steps)
    score_model = GaussianScoreModel(prior, setting.noise_draws)
    if name == "vsd, exact q":  # no lag and no fitting error: r is q_theta itself, read off theta
        return ExactScoreVSD(prior, score_model, guidance, ScoreModelConfig(train_steps=0), particle)
    if base not in METHODS:
        raise ValueError(f"unknown method {name!r}")
    recipe = Recipe(guidance=guidance, score_model=score_cfg, lookahead=lookahead)
    return build_distiller(guidance, recipe, prior, score_model=score_model)


class ExactScoreVSD(VSD):
    """VSD with the true score of q_theta in place of r: what VSD would do with a perfect, lag-free
    score model (the reference the others are measured against)."""

    def __init__(self, prior, score_model, cfg, score_cfg, particle: GaussianParticle):
        super().__init__(prior, score_model, cfg, score_cfg)
        self.particle = particle

    def score(self, x_t: Tensor, t: Tensor, text_emb: Tensor, camera: Tensor) -> Tensor:
        return gaussian_eps(x_t, t, self.prior.alphas_cumprod, self.particle.m.detach(), self.particle.cov())


def run(name: str, setting: Setting, record_every: int = 0) -> tuple[Distance, list[tuple[int, Distance]]]:
    """Optimise q_theta towards p with method `name`; the final distance and, every `record_every`
    steps, the trajectory."""
    generator = torch.Generator().manual_seed(setting.seed)
    prior = GaussianPrior(TARGET_MU, TARGET_COV)
    particle = GaussianParticle(TARGET_MU + torch.tensor(setting.start_offset), 0.5 * torch.eye(DIM),
                                setting.lr, setting.batch, generator)
    distiller = method_distiller(name, prior, particle, setting)
    # theta's learning rate decays to zero by a cosine (the paper's code decays it too): under a
    # constant rate q keeps jittering by about one step around wherever the method leads it
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(particle.adam, T_max=setting.steps) \
        if setting.cosine_decay else None
    trajectory = []
    for step in range(setting.steps):
        optimization_step(particle, lambda x: x, distiller, step, generator)
        if decay is not None:
            decay.step()
        if record_every and (step + 1) % record_every == 0:
            trajectory.append((step + 1, distance(particle, prior)))
    return distance(particle, prior), trajectory
