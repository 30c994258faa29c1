"""The frozen text-to-image diffusion prior: text embeddings, image <-> model space, the noise
schedule's arithmetic, and classifier-free-guided noise prediction.

Notation (DDPM, variance preserving): x_t = alpha_t x0 + sigma_t eps with alpha_t = sqrt(abar_t)
and sigma_t = sqrt(1 - abar_t), abar_t = prod_{s<=t} (1 - beta_s). "Model space" is the space the
UNet denoises: scaled VAE latents for a latent model (Stable Diffusion), [-1, 1] pixels for a
pixel model.

Attention processors are left at diffusers' defaults (PyTorch SDPA). Forward-mode AD through the
UNet (`torch.func.jvp`, for L2-VSD) does not go through the fused SDPA kernels: that pass must
run with math attention (`torch.nn.attention.sdpa_kernel(SDPBackend.MATH)` or `AttnProcessor()`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .shared_unet import SharedUNet

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class PriorLoadError(Exception):
    """The model cannot be loaded; the message is one line, shown to the user as is."""


@dataclass(frozen=True)
class ModelSource:
    """Which weights a prior holds: what was asked for, and what it resolved to. Every stage's
    manifest records it (details.prior), so a run says which weights made it."""

    model: str  # as given: a hub id, a local directory, or "toy"
    revision: str | None = None  # asked for (hub ids only): a branch, tag or commit; None: the default branch
    commit: str | None = None  # the hub commit every file came from; None for a local directory
    path: str | None = None  # the local directory, resolved; None for a hub id


# --------------------------------------------------------------------------------------------
# The prior
# --------------------------------------------------------------------------------------------


class DiffusionPrior:
    """A frozen diffusers text-to-image model. All returned tensors are float32 unless noted."""

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module | None,
        text_encoder: nn.Module,
        tokenizer,
        scheduler,
        *,
        device: torch.device,
        dtype: torch.dtype,
        source: ModelSource | None = None,
    ) -> None:
        self.source = source or ModelSource(model="(built in memory)")
        self.unet = unet
        # the prior and VSD's score model share this UNet; each asks the owner for its network
        self.shared_unet = SharedUNet(unet)
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.device = torch.device(device)
        self.dtype = dtype

        self.num_train_timesteps: int = int(scheduler.config.num_train_timesteps)
        self.prediction_type: str = scheduler.config.prediction_type
        if self.prediction_type not in PREDICTION_TYPES:
            raise PriorLoadError(f"unsupported prediction_type '{self.prediction_type}' in the scheduler config")
        self.alphas_cumprod: Tensor = scheduler.alphas_cumprod.to(self.device, torch.float32)

        self.latent_space: bool = vae is not None
        # each VAE down block but the last halves the resolution (diffusers' own formula)
        self.vae_scale_factor: int = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_size: int = _square_size(unet.config.sample_size) * self.vae_scale_factor
        self._prompt_cache: dict[str, Tensor] = {}

    # ---- text ----------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """[B, L, D] text-encoder states in the prior's dtype; each string is encoded once."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            tokens = self.tokenizer(
                missing,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            states = self.text_encoder(tokens.input_ids.to(self.device))[0]
            for prompt, state in zip(missing, states.to(self.dtype)):
                self._prompt_cache[prompt] = state
        return torch.stack([self._prompt_cache[p] for p in prompts])

    # ---- images <-> model space ------------------------------------------------------------

    def encode_images(self, rgb: Tensor) -> Tensor:
        """rgb [B,3,H,W] in [0,1] -> x0 in model space (float32), differentiable w.r.t. rgb."""
        rgb = rgb.to(self.device, torch.float32)
        if rgb.shape[-2:] != (self.image_size, self.image_size):
            downsampling = rgb.shape[-2] > self.image_size or rgb.shape[-1] > self.image_size
            rgb = F.interpolate(
                rgb, size=(self.image_size, self.image_size), mode="bilinear",
                align_corners=False, antialias=downsampling,
            )
        pixels = 2.0 * rgb - 1.0
        if self.vae is None:
            return pixels
        # the posterior mean, not a sample: deterministic, and SD's posterior std is negligible
        latents = self.vae.encode(pixels.to(self.dtype)).latent_dist.mean
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift is not None:
            latents = latents - shift
        return latents.float() * self.vae.config.scaling_factor

    def decode(self, x0: Tensor) -> Tensor:
        """x0 in model space -> rgb [B,3,H,W] in [0,1] (float32). Gradients flow if enabled."""
        x0 = x0.to(self.device, torch.float32)
        if self.vae is None:
            pixels = x0
        else:
            latents = x0 / self.vae.config.scaling_factor
            shift = getattr(self.vae.config, "shift_factor", None)
            if shift is not None:
                latents = latents + shift
            pixels = self.vae.decode(latents.to(self.dtype)).sample.float()
        return ((pixels + 1.0) / 2.0).clamp(0.0, 1.0)

    # ---- noise schedule --------------------------------------------------------------------

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t), each [B,1,1,1] float32: sqrt(abar_t), sqrt(1 - abar_t)."""
        abar = self.alphas_cumprod[t.to(self.device).long()].view(-1, 1, 1, 1)
        return abar.sqrt(), (1.0 - abar).sqrt()

    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = self.alpha_sigma(t)
        return alpha * x0 + sigma * eps

    def v_target(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """Salimans & Ho's v = alpha eps - sigma x0."""
        alpha, sigma = self.alpha_sigma(t)
        return alpha * eps - sigma * x0

    def to_eps(self, model_output: Tensor, xt: Tensor, t: Tensor, prediction_type: str) -> Tensor:
        """The eps implied by a network output of the given parameterisation, at (xt, t)."""
        model_output = model_output.float()
        if prediction_type == "epsilon":
            return model_output
        alpha, sigma = self.alpha_sigma(t)
        xt = xt.float()
        if prediction_type == "v_prediction":
            # xt = alpha x0 + sigma eps and v = alpha eps - sigma x0, with alpha^2 + sigma^2 = 1
            return sigma * xt + alpha * model_output
        if prediction_type == "sample":
            return (xt - alpha * model_output) / sigma
        raise ValueError(f"unknown prediction_type '{prediction_type}' (expected one of {PREDICTION_TYPES})")

    # ---- noise prediction ------------------------------------------------------------------

    def unet_eps(
        self,
        xt: Tensor,
        t: Tensor,
        text_emb: Tensor,
        class_labels: Tensor | None = None,
        unet: nn.Module | None = None,
    ) -> Tensor:
        """Run `unet` (default: the prior's module in whatever state its owner has put it)
        and read its output as the prior's prediction_type. Inputs are cast to the UNet's dtype;
        eps comes back float32. Gradients flow if enabled."""
        unet = self.unet if unet is None else unet
        unet_dtype = next(unet.parameters()).dtype
        output = unet(
            xt.to(self.device, unet_dtype),
            t.to(self.device),
            encoder_hidden_states=text_emb.to(self.device, unet_dtype),
            class_labels=None if class_labels is None else class_labels.to(self.device, unet_dtype),
            return_dict=False,
        )[0]
        return self.to_eps(output, xt, t, self.prediction_type)

    @torch.no_grad()
    def predict_eps(
        self, xt: Tensor, t: Tensor, cond_emb: Tensor, uncond_emb: Tensor, guidance_scale: float
    ) -> Tensor:
        """Classifier-free guided eps of the pretrained model: eps_u + s (eps_c - eps_u), from one
        UNet call on the doubled batch [uncond; cond]."""
        with self.shared_unet.pretrained():
            eps = self.unet_eps(
                torch.cat([xt, xt]), torch.cat([t, t]), torch.cat([uncond_emb, cond_emb])
            )
        eps_uncond, eps_cond = eps.chunk(2)
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def _square_size(sample_size: int | list[int] | tuple[int, ...]) -> int:
    if isinstance(sample_size, int):
        return sample_size
    height, width = sample_size
    if height != width:
        raise PriorLoadError(f"only square models are supported, this UNet's sample_size is {list(sample_size)}")
    return int(height)
