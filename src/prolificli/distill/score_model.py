"""VSD's model eps_phi(x_t, t, c, y) of the distribution of the current renders (Sec. 3.2, App. F).

A LoRA of a pretrained text-to-image UNet plus a camera embedding: "the camera pose c is fed into
a 2-layer MLP and then added to timestep embedding at each U-Net block" (Appendix F). That is
exactly what a diffusers UNet does with `class_embedding(class_labels)`, so the MLP is installed
as `unet.class_embedding` and the camera goes in as `class_labels = c2w.flatten(1)`.

Base UNet: with cfg.base == "prior" the score model is an adapter on the prior's own UNet (one
UNet in memory), attached through the prior's `SharedUNet` (prior/shared_unet.py), which every
pass of either network asks for the state it needs. Otherwise cfg.base names a second diffusers
checkpoint whose UNet is loaded frozen, with an owner of its own, and carries the adapter.

It is trained on the renders with the diffusion loss of Eq. (8) in its own parameterisation,
cfg.prediction_type (v-prediction in the paper, App. F), which may differ from the prior's:
e.g. Stable Diffusion 2.1-base predicts eps, and its LoRA is read as a v-predictor from the
start (as in the official code and threestudio); that reading is off until the LoRA has adapted.

Mixed precision: the base UNet may be fp16 on GPU; the LoRA and camera-MLP parameters are kept in
float32 (peft's LoRA layer casts its input to its own dtype and the result back; the MLP output is
cast to the UNet's dtype by diffusers), so AdamW steps of about lr = 1e-4 are not lost to fp16
rounding. On CPU everything is float32.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigError, ScoreModelConfig
from .base import sample_noise, sample_timesteps, sample_uniform
from ..prior.shared_unet import SharedUNet

ADAPTER_NAME = "score_model"
CAMERA_DIM = 16  # c2w.flatten(1)
# score_model.lora_targets: the named sets, as the suffixes of the UNet module names they cover
LORA_TARGETS = {
    "attention": ("to_q", "to_k", "to_v", "to_out.0"),  # the attention projections, as in the official code
    # A UNet with attention at low resolution only (the toy one: 8x8) cannot change its fine
    # detail through the attention LoRA; its ResNet blocks are where that detail is made.
    "attention+resnet": ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj"),
}


def lora_target_modules(unet: nn.Module, targets: str | list[str]) -> list[str]:
    """The full names of the UNet modules that get a LoRA: a named set's suffixes matched against
    every Linear and Conv2d, or an explicit list of module names, each of which must exist."""
    layers = set()
    for name, module in unet.named_modules():
        if name.endswith(".base_layer") or ".lora_" in name:  # the parts of a layer peft has wrapped
            continue
        # a layer that an earlier score model's adapter wrapped (a batch reuses the prior) is still one
        if isinstance(getattr(module, "base_layer", module), (nn.Linear, nn.Conv2d)):
            layers.add(name)
    if isinstance(targets, str):
        if targets not in LORA_TARGETS:
            raise ConfigError(f"score_model.lora_targets: {targets!r} is not one of {', '.join(LORA_TARGETS)} "
                              f"or a list of module names")
        suffixes = LORA_TARGETS[targets]
        return sorted(name for name in layers if any(name == s or name.endswith("." + s) for s in suffixes))
    unknown = [name for name in targets if name not in layers]
    if unknown or not targets:
        example = sorted(layers)[0] if layers else "-"
        raise ConfigError(f"score_model.lora_targets: {', '.join(unknown) or 'an empty list'} "
                          f"{'is not a Linear or Conv2d of the UNet' if unknown else 'names no module'} "
                          f"(full module names, e.g. {example!r})")
    return sorted(set(targets))


def _load_separate_unet(prior, name: str) -> nn.Module:
    """The UNet of another diffusers model (a local directory, or a hub id; see load_local_or_hub)."""
    from diffusers import UNet2DConditionModel

    from ..prior import PriorLoadError
    from ..prior.loading import load_local_or_hub

    def load(source: str, local_files_only: bool) -> nn.Module:
        with warnings.catch_warnings():
            # diffusers passes a deprecated argument to huggingface_hub on every hub load
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            return UNet2DConditionModel.from_pretrained(
                source, subfolder="unet", torch_dtype=prior.dtype, local_files_only=local_files_only
            )

    what = f"cannot load the score model's base UNet '{name}' (score_model.base: 'prior' or a diffusers model)"
    unet = load_local_or_hub(name, what, "--set score_model.base=", load)
    if unet.config.in_channels != prior.unet.config.in_channels:
        raise PriorLoadError(
            f"score model base '{name}' takes {unet.config.in_channels} input channels but the prior "
            f"works with {prior.unet.config.in_channels}"
        )
    return unet.to(prior.device)


class ScoreModel(nn.Module):
    """eps_phi: a LoRA + camera MLP on a frozen UNet.

    `self.unet` is registered, so `parameters()` includes the frozen base (the prior's own UNet
    when cfg.base == "prior"); the optimizer takes `trainable_parameters()`.
    """

    def __init__(self, prior, cfg: ScoreModelConfig):
        super().__init__()
        from peft import LoraConfig

        self.prior = prior
        self.cfg = cfg
        self.shared = prior.shared_unet if cfg.base == "prior" else SharedUNet(_load_separate_unet(prior, cfg.base))
        unet = self.shared.unet
        unet.requires_grad_(False)
        unet.eval()
        self.unet_dtype = unet.conv_in.weight.dtype

        # LoRA B starts at zero (init_lora_weights=True), so the adapter starts as the identity.
        # Adding the adapter marks every non-LoRA parameter frozen, hence the camera MLP comes after.
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            target_modules=lora_target_modules(unet, cfg.lora_targets),
            init_lora_weights=True,
            lora_dropout=0.0,
        )
        self.camera_embedding: nn.Module | None = None
        if cfg.camera_embedding:
            time_embed_dim = unet.time_embedding.linear_2.out_features
            camera_mlp = nn.Sequential(
                nn.Linear(CAMERA_DIM, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
            )
            # Zero last layer: the camera adds exactly nothing to the timestep embedding at the start,
            # so together with LoRA's zero B the score model starts as the base UNet (a good first
            # estimate of the render distribution's score) instead of a UNet whose timestep signal
            # is corrupted by a random offset. The last layer still gets gradients (its input, the
            # hidden activations, is non-zero), so the camera is learned from the first step on.
            nn.init.zeros_(camera_mlp[2].weight)
            nn.init.zeros_(camera_mlp[2].bias)
            self.camera_embedding = camera_mlp.to(device=prior.device, dtype=torch.float32)
        self.shared.attach_score_model(lora, ADAPTER_NAME, self.camera_embedding)

        self.unet = unet
        self._trainable = {name: p for name, p in unet.named_parameters() if p.requires_grad}

    # ------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Put the UNet in this model's state now. Every pass asks for it anyway; a caller about
        to enter a torch.func transform asks first, so the pass inside finds nothing to switch."""
        self.shared.adapted()

    def raw_output(self, xt: Tensor, t: Tensor, text_emb: Tensor, camera: Tensor | None) -> Tensor:
        """The UNet's output in the score model's parameterisation (v or eps), float32; camera
        None is the zero camera (the dropped condition)."""
        unet = self.shared.adapted()
        class_labels = None
        if self.camera_embedding is not None:
            if camera is None:
                camera = torch.zeros(xt.shape[0], CAMERA_DIM, device=xt.device)
            class_labels = camera.to(device=xt.device, dtype=torch.float32)
        out = unet(
            xt.to(self.unet_dtype),
            t,
            encoder_hidden_states=text_emb.to(self.unet_dtype),
            class_labels=class_labels,
        ).sample
        return out.float()

    def trainable_items(self) -> dict[str, nn.Parameter]:
        """LoRA and camera-MLP parameters by their name in the score model (`unet.` + UNet name)."""
        return {f"unet.{name}": p for name, p in self._trainable.items()}

    def forward(self, xt: Tensor, t: Tensor, text_emb: Tensor, camera: Tensor | None) -> Tensor:
        """eps_phi(x_t, t, c, y) in float32, whatever parameterisation the model is trained in. A
        module call, so that torch.func.functional_call can swap the parameters (L2-VSD)."""
        return self.prior.to_eps(self.raw_output(xt, t, text_emb, camera), xt.float(), t, self.cfg.prediction_type)

    eps = forward

    def diffusion_loss(
        self,
        x0: Tensor,
        text_emb: Tensor,
        camera: Tensor | None,
        *,
        t: Tensor | None = None,
        eps: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Eq. (8) on the renders x0 (detached), in cfg.prediction_type: mean squared error.

        t ~ U{0, ..., T-1}: Eq. (8)'s t ~ U(0, 1) is the full range, unlike the distillation's
        U(0.02, 0.98) (threestudio trains its LoRA on the same full range). Each camera row is
        replaced by zeros with probability cfg.camera_dropout so that the zero camera means
        "any view" (classifier-free-guidance style training of the camera condition).
        """
        prior = self.prior
        x0 = x0.detach()
        batch = x0.shape[0]
        if t is None:
            t = sample_timesteps(0, prior.num_train_timesteps - 1, batch, x0.device, generator)
        if eps is None:
            eps = sample_noise(x0, generator)
        if camera is None:
            camera = torch.zeros(batch, CAMERA_DIM, device=x0.device)
        keep = sample_uniform(batch, x0.device, generator) >= self.cfg.camera_dropout
        camera = camera * keep[:, None].to(camera.dtype)

        xt = prior.add_noise(x0, eps, t)
        if self.cfg.prediction_type == "v_prediction":
            target = prior.v_target(x0, eps, t)
        else:
            target = eps
        prediction = self.raw_output(xt, t, text_emb, camera)
        return F.mse_loss(prediction, target.float())

    # ------------------------------------------------------------------------------------------

    def trainable_parameters(self) -> list[nn.Parameter]:
        """LoRA and camera-MLP parameters, in a fixed order (the optimizer's state refers to it)."""
        return list(self._trainable.values())

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Detached copies keyed by parameter name within the UNet (safetensors-ready)."""
        return {name: p.detach().clone().contiguous() for name, p in self._trainable.items()}

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = sorted(set(self._trainable) - set(state))
        unexpected = sorted(set(state) - set(self._trainable))
        if missing or unexpected:
            raise ValueError(
                f"score-model state does not match this model (rank or camera setting changed?): "
                f"{len(missing)} missing, {len(unexpected)} unexpected, e.g. {(missing + unexpected)[0]}"
            )
        with torch.no_grad():
            for name, p in self._trainable.items():
                if state[name].shape != p.shape:
                    raise ValueError(
                        f"score-model tensor {name}: shape {tuple(state[name].shape)}, expected {tuple(p.shape)}"
                    )
                p.copy_(state[name])
