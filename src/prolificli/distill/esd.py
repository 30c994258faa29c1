"""Entropic Score Distillation (ESD; Wang et al. 2023, "Taming Mode Collapse in Score Distillation").

VSD's score model sees the camera, so eps_phi(x_t, t, c, y) models the renders *of that view*; a
3D model that shows the same image from every view (the Janus failure) is not penalised for it.
ESD adds the entropy of the rendered-image distribution across views to the objective, which
amounts to mixing in the camera-free score:

    eps_mix = lambda * eps_phi(x_t, t, y) + (1 - lambda) * eps_phi(x_t, t, c, y)
    grad_theta = w(t) (eps_pretrain - eps_mix) dg/dtheta

lambda = `esd.entropy_weight` (0.5 default; 0 is VSD). The camera-free prediction is the zero
camera, which means "any view" only because the score model is trained with camera dropout
(score_model.camera_dropout > 0); build_recipe refuses ESD without it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import ESDConfig, GuidanceConfig, ScoreModelConfig
from .score_model import ScoreModel
from .vsd import VSD


class ESD(VSD):
    def __init__(self, prior, score_model: ScoreModel, cfg: GuidanceConfig, score_cfg: ScoreModelConfig,
                 esd: ESDConfig):
        super().__init__(prior, score_model, cfg, score_cfg)
        self.entropy_weight = esd.entropy_weight

    def score(self, x_t: Tensor, t: Tensor, text_emb: Tensor, camera: Tensor) -> Tensor:
        # one pass on the doubled batch [zero camera; camera]
        with torch.no_grad():
            eps = self.score_model.eps(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([text_emb, text_emb]),
                                       torch.cat([torch.zeros_like(camera), camera]))
        eps_any_view, eps_this_view = eps.chunk(2)
        return self.entropy_weight * eps_any_view + (1 - self.entropy_weight) * eps_this_view
