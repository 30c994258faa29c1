"""Variational Score Distillation (ProlificDreamer Eq. 9, Algorithm 1).

    grad_theta L_VSD = E_{t,eps,c}[ w(t) (eps_pretrain(x_t, t, y^c) - eps_phi(x_t, t, c, y)) dg(theta, c)/dtheta ]

SDS's Gaussian noise eps is replaced by eps_phi, a LoRA + camera-conditioned model of the current
renders' distribution, trained on those renders alongside theta. One call does Algorithm 1's
lines 5 and 6 for a batch of renders x0 = g(theta, c):
  5: the 3D gradient with the *current* phi (returned as a surrogate loss; the caller steps theta),
  6: score_cfg.train_steps AdamW steps of phi on the same renders, detached (Eq. 8).
The first step's gradient is taken before line 5's gradient is formed (phi unchanged), so that a
lookahead method (L2-VSD) can read it; VSD's arithmetic and random draws are the same either way.
Rendering once and using the image twice is what keeps VSD's cost close to SDS's (App. E).

The variants change one of two methods: `score` (what eps_phi is: ESD mixes in the camera-free
prediction) and `score_and_update` (when phi moves relative to the scoring: L-VSD moves it first,
L2-VSD adds the linear term of that move).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import GuidanceConfig, ScoreModelConfig
from .base import (Conditioning, DistillerState, DistillOutput, draw_t_and_noise, grad_norm,
                                     resolved_cfg_scale, surrogate_loss)
from .schedule import TimestepSchedule, weight
from .score_model import ScoreModel


def lora_loss_log(losses: list[Tensor]) -> dict[str, Tensor]:
    """The mean diffusion loss of phi's updates this step (nothing when there were none)."""
    return {"lora_loss": torch.stack(losses).mean()} if losses else {}


class VSD:
    def __init__(self, prior, score_model: ScoreModel, cfg: GuidanceConfig, score_cfg: ScoreModelConfig):
        self.prior = prior
        self.score_model = score_model
        self.cfg = cfg
        self.score_cfg = score_cfg
        self.schedule = TimestepSchedule(cfg, prior.num_train_timesteps)
        self.guidance_scale = resolved_cfg_scale(cfg)
        # torch's AdamW defaults otherwise (betas 0.9/0.999, weight decay 0.01), as in the official code
        self.optimizer = torch.optim.AdamW(score_model.trainable_parameters(), lr=score_cfg.lr)

    def __call__(
        self,
        x0: Tensor,
        cond: Conditioning,
        step: int,
        *,
        t: Tensor | None = None,
        eps: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> DistillOutput:
        t, eps = draw_t_and_noise(self.schedule, x0, step, t, eps, generator)
        score_text_emb = cond.text_emb if cond.score_text_emb is None else cond.score_text_emb

        # Line 5. Neither UNet pass keeps a graph: the gradient skips the UNet Jacobians (Eq. 9),
        # and a graph through a 512px SD UNet would dominate memory.
        x_t = self.prior.add_noise(x0.detach(), eps, t)
        with torch.no_grad():
            eps_pretrain = self.prior.predict_eps(x_t, t, cond.text_emb, cond.uncond_emb, self.guidance_scale)
        eps_phi, update_logs = self.score_and_update(x0, x_t, t, score_text_emb, cond.camera, generator)

        grad = weight(self.prior, t, self.cfg.weighting) * (eps_pretrain.float() - eps_phi)
        loss = surrogate_loss(x0, grad)

        logs = {"t": t.float().mean(), "grad_norm": grad_norm(grad), **update_logs}
        return DistillOutput(loss=loss, grad=grad, logs=logs)

    def score(self, x_t: Tensor, t: Tensor, text_emb: Tensor, camera: Tensor) -> Tensor:
        """eps_phi(x_t, t, c, y): the camera-conditional prediction, as the official code calls it.
        (threestudio runs CFG on eps_phi, camera vs zero camera, at scale 1.0: the same prediction
        at twice the cost.)"""
        with torch.no_grad():
            return self.score_model.eps(x_t, t, text_emb, camera)

    def score_and_update(self, x0: Tensor, x_t: Tensor, t: Tensor, text_emb: Tensor, camera: Tensor,
                         generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        """eps_phi for the 3D gradient with the current phi, then line 6: train_steps updates of phi;
        and what to log of them. phi's first gradient is taken before phi moves, for `lookahead`."""
        eps_phi = self.score(x_t, t, text_emb, camera)
        lora_losses, logs = [], {}
        for k in range(self.score_cfg.train_steps):
            lora_losses.append(self.score_model_gradient(x0, text_emb, camera, generator))
            if k == 0:
                term, logs = self.lookahead(x_t, t, text_emb, camera)
                eps_phi = eps_phi + term
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return eps_phi, {**lora_loss_log(lora_losses), **logs}

    def score_model_gradient(self, x0: Tensor, text_emb: Tensor, camera: Tensor,
                             generator: torch.Generator | None) -> Tensor:
        """Eq. 8 on the renders (detached): fills the trainable parameters' .grad, returns the loss."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.score_model.diffusion_loss(x0, text_emb, camera, generator=generator)
        loss.backward()
        return loss.detach()

    def lookahead(self, x_t: Tensor, t: Tensor, text_emb: Tensor,
                  camera: Tensor) -> tuple[Tensor | float, dict[str, Tensor]]:
        """What to add to eps_phi before the 3D gradient, and what to log of it; VSD adds nothing
        (L2-VSD: its linear term). Called with the gradient of phi's first update in the .grad."""
        return 0.0, {}

    def state_dict(self) -> DistillerState:
        return DistillerState(self.score_model.trainable_state_dict(), self.optimizer.state_dict())

    def load_state_dict(self, state: DistillerState) -> None:
        self.score_model.load_trainable_state_dict(state.tensors)
        if state.optimizer is None:
            raise ValueError("the checkpoint has no optimiser state for the score model")
        self.optimizer.load_state_dict(state.optimizer)
