"""L-VSD and L2-VSD: VSD with a lookahead of the score model (L2-VSD paper, Sec. 3.2 and 4).

VSD scores the render x0 with phi, then moves phi one step towards the renders: its score model
lags one step behind theta. L-VSD scores with the next phi instead (gamma = score_model.train_steps
updates of phi on the current render first, Eq. 7-8), which removes the lag but lets phi overfit
the very render it scores. L2-VSD keeps VSD's order and adds only the first-order term of the
lookahead:

    eps_{phi - eta Delta}(x_t) ~= eps_phi(x_t) + J_phi eps_phi(x_t) . (-eta Delta)
    grad_theta = w(t) (eps_pretrain - eps_phi - eta J . (-Delta)) dg/dtheta            (Eq. 11-12)

Delta is the gradient of phi's diffusion loss (Eq. 8) on the current render: exactly the gradient
VSD's own phi update then applies. The step direction is the paper's plain SGD step -eta Delta,
not the AdamW step the optimiser takes; eta is `lookahead.eta`. J . v is one forward-mode pass
(torch.func.jvp) over the trainable parameters (LoRA, camera MLP), through the math attention
kernel, the one with forward-mode derivatives.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..config import GuidanceConfig, LookaheadConfig, ScoreModelConfig
from .base import grad_norm
from .score_model import ScoreModel
from .vsd import VSD, lora_loss_log


def linear_term(score_model: ScoreModel, direction: dict[str, Tensor], x_t: Tensor, t: Tensor, text_emb: Tensor,
                camera: Tensor) -> Tensor:
    """J_phi eps_phi(x_t, t, c, y) . direction: how eps_phi moves per unit of the parameter step."""
    params = {name: p.detach() for name, p in score_model.trainable_items().items() if name in direction}

    def eps_of(p: dict[str, Tensor]) -> Tensor:
        # the camera MLP is reachable by two paths (score_model.camera_embedding and the UNet's
        # class_embedding); with tie_weights the swap is not undone on the second path
        return functional_call(score_model, p, (x_t, t, text_emb, camera), strict=False, tie_weights=False)

    score_model.prepare()  # any switch of the shared UNet's state happens here, outside the transform
    # group_norm's forward-mode rule views its input's tangent, which fails on the non-contiguous
    # tangents some UNets produce (seen after upsampling in the toy UNet): hand it contiguous ones
    hooks = [m.register_forward_pre_hook(lambda _, args: tuple(a.contiguous() for a in args))
             for m in score_model.modules() if isinstance(m, torch.nn.GroupNorm)]
    try:
        with sdpa_kernel(SDPBackend.MATH), torch.no_grad():
            _, tangent = jvp(eps_of, (params,), ({name: direction[name] for name in params},))
    finally:
        for hook in hooks:
            hook.remove()
    return tangent


class LVSD(VSD):
    def score_and_update(self, x0: Tensor, x_t: Tensor, t: Tensor, text_emb: Tensor, camera: Tensor,
                         generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        """gamma updates of phi on the render first, then eps_phi of the updated phi (Eq. 7-8)."""
        lora_losses = []
        for _ in range(self.score_cfg.train_steps):
            lora_losses.append(self.score_model_gradient(x0, text_emb, camera, generator))
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self.score(x_t, t, text_emb, camera), lora_loss_log(lora_losses)


class L2VSD(VSD):
    def __init__(self, prior, score_model: ScoreModel, cfg: GuidanceConfig, score_cfg: ScoreModelConfig,
                 lookahead: LookaheadConfig):
        super().__init__(prior, score_model, cfg, score_cfg)
        self.lookahead_cfg = lookahead
        items = score_model.trainable_items()
        if lookahead.last_layer_only:  # the paper's cheaper variant: the last LoRA layer of the UNet
            lora = [name for name in items if "lora_" in name]
            last = lora[-1].split(".lora_")[0]
            self.lookahead_names = [name for name in lora if name.startswith(last + ".lora_")]
        else:
            self.lookahead_names = list(items)
        self.lookahead_params = {name: items[name] for name in self.lookahead_names}

    def lookahead(self, x_t: Tensor, t: Tensor, text_emb: Tensor,
                  camera: Tensor) -> tuple[Tensor | float, dict[str, Tensor]]:
        direction = {name: -self.lookahead_cfg.eta * p.grad for name, p in self.lookahead_params.items()
                     if p.grad is not None}
        if not direction:
            return 0.0, {}
        term = linear_term(self.score_model, direction, x_t, t, text_emb, camera)
        return term, {"lookahead_norm": grad_norm(term)}
