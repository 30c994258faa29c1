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

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prolificli.config import PriorConfig
from prolificli.prior.shared_unet import SharedUNet

REQUIRED_COMPONENTS = ("unet", "text_encoder", "tokenizer", "scheduler")
HUB_PROBE_TIMEOUT_S = 2.0  # one HEAD request: an online hub answers well within it
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
T = TypeVar("T")


class PriorLoadError(Exception):
    """The model cannot be loaded; the message is one line, shown to the user as is."""


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
    ) -> None:
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


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PriorLoadError(f"device '{name}' was asked for but CUDA is not available; use --set prior.device=cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def load_prior(cfg: PriorConfig) -> DiffusionPrior:
    """Load the frozen prior from a local diffusers directory or a Hugging Face hub id."""
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    source = resolve_model_alias(cfg.model)
    components = load_local_or_hub(
        source, f"cannot load model '{cfg.model}'", "--model",
        lambda source, local_files_only: _load_components(source, cfg.model, dtype, local_files_only=local_files_only))
    unet, vae, text_encoder, tokenizer, scheduler = components
    for module in (unet, vae, text_encoder):
        if module is not None:
            module.to(device).eval().requires_grad_(False)
    return DiffusionPrior(unet, vae, text_encoder, tokenizer, scheduler, device=device, dtype=dtype)


TOY_PRIOR_DIR = Path(__file__).resolve().parent.parent / "assets" / "toy-prior"


def resolve_model_alias(name: str) -> str:
    """`toy` is the toy world's prior shipped inside the package; any other name is itself."""
    if name != "toy":
        return name
    if not (TOY_PRIOR_DIR / "model_index.json").is_file():
        raise PriorLoadError(f"the toy prior is not in this installation ({TOY_PRIOR_DIR}); "
                             "build it with: python -m prolificli.toyworld.train_prior")
    return str(TOY_PRIOR_DIR)


TINY_HINT = "to try the tool offline: python -m prolificli.prior.tiny DIR"


def load_local_or_hub(source: str, what: str, option: str, load: Callable[[str, bool], T], *,
                      offline_hint: str = TINY_HINT) -> T:
    """`load(source, local_files_only)` for a local directory or a Hugging Face hub id.

    A hub id is first looked up in the local cache only; the network is tried only when
    HF_HUB_OFFLINE is not set and a single short request shows the hub is reachable, so an
    offline machine fails in well under a second instead of after ~25 s of retries. Every
    failure is a one-line PriorLoadError starting with `what`; `option` is the flag that takes
    a local copy instead.
    """
    from huggingface_hub.errors import HFValidationError

    path = Path(source).expanduser()
    if path.is_dir():
        try:
            return load(str(path), True)
        except (OSError, ValueError) as exc:
            raise PriorLoadError(f"{what}: {_first_line(exc)}") from None
    if path.exists():
        raise PriorLoadError(f"{what}: it is a file, not a diffusers model directory")
    if _looks_like_path(source):
        raise PriorLoadError(f"{what}: no such directory")
    try:
        return load(source, True)
    except HFValidationError:
        raise PriorLoadError(f"{what}: no such directory, and not a valid hub id") from None
    except (OSError, ValueError):
        pass  # not (completely) in the cache
    advice = (f"Download it on a connected machine (hf download {source} --local-dir DIR) and pass {option} DIR "
              f"({offline_hint}).")
    why = "HF_HUB_OFFLINE is set" if _hub_offline() else None if _hub_reachable() else "the hub is unreachable"
    if why is not None:
        raise PriorLoadError(f"{what}: not a local directory and not in the Hugging Face cache, and {why}. {advice}")
    try:
        return load(source, False)
    except (OSError, ValueError) as exc:  # the hub answered, but not with this model (or a proxy did)
        raise PriorLoadError(f"{what} from the Hugging Face hub: {_first_line(exc).rstrip('.')}. {advice}") from None


def _looks_like_path(source: str) -> bool:
    """A hub id is 'name' or 'owner/name'; anything else the user typed is meant as a path."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


def _hub_offline() -> bool:
    """Read now, not at import: huggingface_hub's own constant is fixed when it is imported."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _hub_reachable() -> bool:
    """One request with a short timeout and no retries (huggingface_hub retries connection
    errors with backoff for ~25 s, which is what an offline user would otherwise wait for)."""
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT_S)
    except Exception:  # any transport failure (DNS, refused, timeout, proxy) means unreachable
        return False
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _model_index(source: str, local_files_only: bool) -> dict | None:
    """model_index.json as a dict; None for a local directory without one."""
    if Path(source).is_dir():
        index = Path(source) / "model_index.json"
        return json.loads(index.read_text()) if index.is_file() else None
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(source, "model_index.json", local_files_only=local_files_only)).read_text())


def _has_component(source: str, index: dict | None, name: str) -> bool:
    if Path(source).is_dir():
        return (Path(source) / name).is_dir()
    entry = (index or {}).get(name)
    return isinstance(entry, list) and entry[:1] != [None]


def _load_components(source: str, display_name: str, dtype: torch.dtype, *, local_files_only: bool) -> tuple:
    """(unet, vae or None, text_encoder, tokenizer, DDPMScheduler), each from its subfolder.

    Raises OSError/ValueError for what is not in the cache or on the hub (the caller decides
    whether to go online), PriorLoadError for a directory that lacks a component."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    index = _model_index(source, local_files_only)
    missing = [name for name in REQUIRED_COMPONENTS if not _has_component(source, index, name)]
    if missing:
        folders = ", ".join(f"{name}/" for name in missing)
        raise PriorLoadError(
            f"cannot load model '{display_name}': it has no {folders} "
            f"(a diffusers text-to-image model needs unet/, text_encoder/, tokenizer/, scheduler/, and vae/ if latent)"
        )

    options = {"local_files_only": local_files_only}
    # diffusers models get their dtype at load time: casting them afterwards logs a warning
    with warnings.catch_warnings():
        # diffusers passes a deprecated argument to huggingface_hub on every hub load
        warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **options)
        vae = None
        if _has_component(source, index, "vae"):
            vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **options)
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **options).to(dtype)
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **options)
        # any scheduler config works (SD ships PNDM's): only its beta schedule and
        # prediction_type are used, through DDPMScheduler's alphas_cumprod
        scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **options)
    return unet, vae, text_encoder, tokenizer, scheduler
