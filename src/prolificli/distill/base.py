"""What every distillation method shares: its inputs, its output, and the surrogate loss.

A score-distillation method does not have a loss whose gradient is the update: it produces a
gradient `grad` on the rendered image x0 directly (Eq. 3 for SDS, Eq. 9 for VSD), skipping the
UNet Jacobian. `surrogate_loss` turns that gradient into a scalar whose autograd gradient with
respect to x0 is exactly `grad / B`, so the rest of the pipeline is ordinary backprop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..step import Conditioning  # noqa: F401  (what every method receives)


def resolved_cfg_scale(guidance) -> float:
    """The guidance config's CFG scale, which `methods.build_recipe` fills in from the method table."""
    if guidance.cfg_scale is None:
        raise ValueError(f"guidance.cfg_scale is unset: build the recipe with methods.build_recipe (which "
                         f"fills in {guidance.method}'s default) or give the scale")
    return float(guidance.cfg_scale)


def draw_t_and_noise(schedule, x0: Tensor, step: int, t: Tensor | None, eps: Tensor | None,
                     generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """A method's random draws for the renders x0: t from the schedule at `step` and eps ~ N(0, I),
    unless the caller fixed them (tests compare methods on the same draws)."""
    if t is None:
        t = schedule.sample(step, x0.shape[0], generator, device=x0.device)
    if eps is None:
        eps = sample_noise(x0, generator)
    return t, eps


@dataclass
class DistillerState:
    """What a stage's checkpoint keeps of a distiller: its tensors (safetensors; VSD: the score
    model's LoRA and camera MLP) and its optimiser's state. SDS keeps neither."""

    tensors: dict[str, Tensor] = field(default_factory=dict)
    optimizer: dict | None = None


@dataclass
class DistillOutput:
    """loss: scalar whose gradient w.r.t. x0 is grad / B; grad: the detached image-space update;
    logs: floats or 0-dim tensors (read only when the loop logs them)."""

    loss: Tensor
    grad: Tensor
    logs: dict[str, float | Tensor] = field(default_factory=dict)


class _SpecifiedGradient(torch.autograd.Function):
    """Forward: 0.5 * ||grad||^2 / B. Backward: grad_output * grad / B into x0, nothing into grad."""

    @staticmethod
    def forward(ctx, x0: Tensor, grad: Tensor) -> Tensor:
        ctx.save_for_backward(grad)
        ctx.batch = x0.shape[0]
        ctx.x0_dtype = x0.dtype
        return 0.5 * (grad.float() ** 2).sum() / ctx.batch

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:
        (grad,) = ctx.saved_tensors
        return (grad_output * grad / ctx.batch).to(ctx.x0_dtype), None


def surrogate_loss(x0: Tensor, grad: Tensor) -> Tensor:
    """The loss 0.5 * ||x0 - (x0 - grad).detach()||^2 / B: its gradient w.r.t. x0 is grad / B.

    Written as a custom autograd function with that value and that gradient rather than as the
    expression itself: autograd of the expression returns x0 - (x0 - grad), which equals grad only
    up to rounding at the scale of |x0| (in fp16 latents that rounding can swallow a small
    late-t gradient whole); here the gradient is grad / B bit for bit, as in the official
    ProlificDreamer code's SpecifyGradient. The value, 0.5 * ||grad||^2 / B, is worth logging
    but is not a quantity being minimised.
    """
    if grad.shape != x0.shape:
        raise ValueError(f"gradient shape {tuple(grad.shape)} does not match x0 {tuple(x0.shape)}")
    return _SpecifiedGradient.apply(x0, grad.detach())


def sample_noise(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """eps ~ N(0, I) shaped like `like`.

    Drawn on the generator's own device and then moved, so that one CPU generator makes a run
    reproducible whichever device the models sit on.
    """
    device = generator.device if generator is not None else like.device
    eps = torch.randn(like.shape, generator=generator, device=device, dtype=torch.float32)
    return eps.to(device=like.device, dtype=like.dtype)


def sample_uniform(n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """n draws from U[0, 1), on the generator's device, then moved to `device`."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=gen_device).to(device)


def sample_timesteps(
    low: int, high: int, n: int, device: torch.device, generator: torch.Generator | None = None
) -> Tensor:
    """n integer timesteps uniform on [low, high] inclusive, as a LongTensor on `device`."""
    gen_device = generator.device if generator is not None else device
    t = torch.randint(low, high + 1, (n,), generator=generator, device=gen_device, dtype=torch.long)
    return t.to(device)


def grad_norm(grad: Tensor) -> Tensor:
    """Mean over the batch of each sample's gradient norm (independent of the batch size), 0-dim.
    Logged values stay tensors until the loop writes them, so a GPU step need not wait for them."""
    return grad.detach().flatten(1).norm(dim=1).mean()
