"""Score Distillation Sampling (DreamFusion; ProlificDreamer Eq. 3).

    grad_theta L_SDS = E_{t,eps,c}[ w(t) (eps_pretrain(x_t, t, y^c) - eps) dg(theta, c)/dtheta ],
    x_t = alpha_t x0 + sigma_t eps,   x0 = g(theta, c).

eps_pretrain is the prior's classifier-free-guided prediction. The UNet Jacobian is dropped, so
the prior runs without gradients and the update enters through the surrogate loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import GuidanceConfig
from .base import (Conditioning, DistillerState, DistillOutput, draw_t_and_noise, grad_norm,
                                     resolved_cfg_scale, surrogate_loss)
from .schedule import TimestepSchedule, weight


class SDS:
    def __init__(self, prior, cfg: GuidanceConfig):
        self.prior = prior
        self.cfg = cfg
        self.schedule = TimestepSchedule(cfg, prior.num_train_timesteps)
        self.guidance_scale = resolved_cfg_scale(cfg)

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

        x_t = self.prior.add_noise(x0.detach(), eps, t)
        with torch.no_grad():
            eps_pretrain = self.prior.predict_eps(x_t, t, cond.text_emb, cond.uncond_emb, self.guidance_scale)
        grad = weight(self.prior, t, self.cfg.weighting) * (eps_pretrain.float() - eps.float())

        loss = surrogate_loss(x0, grad)
        logs = {"t": t.float().mean(), "grad_norm": grad_norm(grad)}
        return DistillOutput(loss=loss, grad=grad, logs=logs)

    def state_dict(self) -> DistillerState:
        return DistillerState()

    def load_state_dict(self, state: DistillerState) -> None:
        if state.tensors or state.optimizer is not None:
            raise ValueError(f"SDS keeps no state, got tensors {sorted(state.tensors)[:3]}")
