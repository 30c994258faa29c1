"""Adaptive density control of a Gaussian-splat particle (3D Gaussian splatting, Sec. 5).

Between densifications each Gaussian accumulates the norm of the loss gradient on its projected
mean (in NDC units: pixels * 2 / resolution) over the renders in which it was drawn. Every
`densify.every` steps, from start_step to stop_step:
- a Gaussian whose mean accumulated gradient is at least grad_threshold is under-reconstructed:
  if small (largest scale <= split_scale) it is cloned in place (Adam moves the two apart), if
  large it is split into two drawn from itself, each with its scales / split_factor;
- Gaussians with opacity below min_opacity or largest scale above max_scale are removed;
- growth stops at max_gaussians (those with the largest gradients go first).
Every opacity_reset_every steps the opacities are lowered to reset_opacity, so Gaussians that are
not needed fade and get pruned.

The optimiser follows the surgery: a kept Gaussian keeps its Adam moments, a new one starts from
zero moments (3DGS does the same). Everything here draws from the generator it is given, and the
statistics are checkpoint tensors, so a resumed run densifies exactly as an uninterrupted one.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import DensifyConfig
from .gaussians import GaussianCloud
from ..render.splat import quaternion_to_rotation


class DensityControl:
    """The gradient statistics of one particle, and the surgery they call for."""

    def __init__(self, cfg: DensifyConfig, count: int, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.grad_sum = torch.zeros(count, device=device)
        self.seen = torch.zeros(count, device=device)

    def tensors(self) -> dict[str, Tensor]:
        return {"grad_sum": self.grad_sum, "seen": self.seen}

    def load_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.grad_sum = tensors["grad_sum"].to(self.grad_sum.device).clone()
        self.seen = tensors["seen"].to(self.seen.device).clone()

    @torch.no_grad()
    def accumulate(self, means2d_grad: Tensor, drawn: Tensor, resolution: int) -> None:
        """means2d_grad [B,N,2] (pixels), drawn [B,N] bool: the Gaussians each render listed."""
        norm = (means2d_grad * (resolution / 2)).norm(dim=-1) * drawn  # in NDC units
        self.grad_sum += norm.sum(0).to(self.grad_sum.dtype)
        self.seen += drawn.sum(0).to(self.seen.dtype)

    def due(self, step: int) -> bool:
        cfg = self.cfg
        return cfg.every > 0 and cfg.start_step <= step <= cfg.stop_step and step % cfg.every == 0

    def reset_due(self, step: int) -> bool:
        cfg = self.cfg
        return cfg.opacity_reset_every > 0 and step <= cfg.stop_step and step % cfg.opacity_reset_every == 0

    @torch.no_grad()
    def densify_and_prune(self, cloud: GaussianCloud, optimizer: torch.optim.Optimizer,
                          generator: torch.Generator | None = None) -> dict[str, int]:
        cfg = self.cfg
        mean_grad = self.grad_sum / self.seen.clamp(min=1)
        largest = cloud.log_scales.max(dim=1).values.exp()
        candidates = mean_grad >= cfg.grad_threshold
        if cfg.max_gaussians > 0:  # grow by at most the room left, largest gradients first
            room = max(cfg.max_gaussians - cloud.count, 0)
            if int(candidates.sum()) > room:
                order = torch.argsort(torch.where(candidates, mean_grad, torch.full_like(mean_grad, -1.0)),
                                      descending=True, stable=True)
                candidates = torch.zeros_like(candidates)
                candidates[order[:room]] = True
        clone = candidates & (largest <= cfg.split_scale)
        split = candidates & ~clone
        params = cloud.tensors()
        # a split Gaussian is replaced by two samples from itself with smaller scales
        split_index = split.nonzero(as_tuple=True)[0].repeat(2)
        rotation = quaternion_to_rotation(params["quaternions"][split_index])
        scales = params["log_scales"][split_index].exp()
        noise = torch.randn(len(split_index), 3, generator=generator, device=scales.device)
        offsets = (rotation @ (scales * noise)[..., None])[..., 0]
        clone_index = clone.nonzero(as_tuple=True)[0]
        extra = {name: torch.cat([value[clone_index], value[split_index]]) for name, value in params.items()}
        extra["means"] = torch.cat([params["means"][clone_index], params["means"][split_index] + offsets])
        extra["log_scales"] = torch.cat([params["log_scales"][clone_index],
                                         params["log_scales"][split_index] - torch.log(torch.tensor(cfg.split_factor))])
        keep = ~split
        # prune among the old and new alike
        all_opacity = torch.sigmoid(torch.cat([params["opacity_logits"][keep], extra["opacity_logits"]]))
        all_largest = torch.cat([largest[keep], extra["log_scales"].max(dim=1).values.exp()])
        survive = (all_opacity >= cfg.min_opacity) & (all_largest <= cfg.max_scale)
        kept_old = keep.nonzero(as_tuple=True)[0]
        n_kept = len(kept_old)
        replace_rows(cloud, optimizer, kept_old[survive[:n_kept]], {k: v[survive[n_kept:]] for k, v in extra.items()})
        self.grad_sum = torch.zeros(cloud.count, device=self.grad_sum.device)
        self.seen = torch.zeros(cloud.count, device=self.seen.device)
        return {"cloned": int(clone.sum()), "split": int(split.sum()),
                "pruned": int((~survive).sum()), "gaussians": cloud.count}

    @torch.no_grad()
    def reset_opacity(self, cloud: GaussianCloud, optimizer: torch.optim.Optimizer) -> None:
        logit = torch.logit(torch.tensor(self.cfg.reset_opacity, dtype=cloud.opacity_logits.dtype))
        everything = torch.arange(cloud.count, device=cloud.means.device)
        lowered = {name: value[everything] for name, value in cloud.tensors().items()}
        lowered["opacity_logits"] = torch.minimum(lowered["opacity_logits"], logit.to(cloud.means.device))
        # the opacity's Adam moments start again (3DGS), the other parameters keep theirs
        replace_rows(cloud, optimizer, everything, {}, values=lowered, fresh={"opacity_logits"})


def replace_rows(cloud: GaussianCloud, optimizer: torch.optim.Optimizer, keep: Tensor, extra: dict[str, Tensor],
                 values: dict[str, Tensor] | None = None, fresh: frozenset[str] | set[str] = frozenset()) -> None:
    """Make each parameter of `cloud` its rows `keep` [K] followed by `extra[name]` [E,...], in the
    cloud and in `optimizer` (whose param groups hold one parameter each, named as the cloud's):
    kept rows keep their Adam moments, extra rows start from zero. `values`: the kept rows' new
    values (default: unchanged); `fresh`: names whose moments all start again."""
    groups = {group.get("name"): group for group in optimizer.param_groups}
    for name, old in cloud.parameters_by_name().items():
        kept = (values[name] if values is not None else old.detach()[keep])
        new = nn.Parameter(torch.cat([kept, extra[name]]) if extra else kept.clone())
        group = groups[name]
        state = optimizer.state.pop(old, None)
        if state:
            n_extra = len(extra[name]) if extra else 0
            for key in ("exp_avg", "exp_avg_sq"):
                moment = torch.zeros_like(kept) if name in fresh else state[key][keep]
                state[key] = torch.cat([moment, moment.new_zeros(n_extra, *moment.shape[1:])])
            optimizer.state[new] = state
        group["params"][0] = new
        setattr(cloud, name, new)
