"""Loading the prior: from a local diffusers directory, the Hugging Face cache, or the hub.

A hub id is first looked up in the cache alone; the network is tried only when HF_HUB_OFFLINE is
not set and one short request shows the hub is reachable, so an offline machine fails at once.
Every file comes from one commit: model_index.json is resolved first (a branch, a tag or the
default branch), and each component is then loaded at the commit it resolved to, which the
prior's `source` records for the manifest. Every failure is a one-line PriorLoadError.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from ..config import PriorConfig
from .diffusion import DiffusionPrior, ModelSource, PriorLoadError

REQUIRED_COMPONENTS = ("unet", "text_encoder", "tokenizer", "scheduler")
HUB_PROBE_TIMEOUT_S = 2.0  # one HEAD request: an online hub answers well within it
TOY_PRIOR_DIR = Path(__file__).resolve().parent.parent / "assets" / "toy-prior"
TINY_HINT = "to try the tool offline: python -m prolificli.prior.tiny DIR"
T = TypeVar("T")

# Stability AI took Stable Diffusion 2 off the hub around 13 November 2025 (the hub answers 404);
# the same diffusers repositories live on as community copies under sd2-community.
REMOVED_FROM_HUB = {
    f"stabilityai/{name}": f"sd2-community/{name}"
    for name in ("stable-diffusion-2-1-base", "stable-diffusion-2-1", "stable-diffusion-2-base",
                 "stable-diffusion-2", "stable-diffusion-2-inpainting", "stable-diffusion-2-depth")
}


def resolve_device(name: str) -> torch.device:
    """`name` was checked by PriorConfig: auto, cpu, mps, cuda[:N] or xpu[:N]."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PriorLoadError(f"device '{name}' was asked for but CUDA is not available; use --device cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def load_prior(cfg: PriorConfig) -> DiffusionPrior:
    """The frozen prior of `cfg.model` (a local diffusers directory, `toy`, or a hub id at
    `cfg.revision`), on its device, every module frozen."""
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    source = resolve_model_alias(cfg.model)
    local = Path(source).expanduser().is_dir()
    if cfg.revision is not None and local:
        raise PriorLoadError(f"cannot load model '{cfg.model}': it is a local directory, and --revision "
                             "(prior.revision) picks a commit of a hub model")
    components, commit = load_local_or_hub(
        source, f"cannot load model '{cfg.model}'", "--model",
        lambda where, local_files_only: _load_components(where, cfg.model, dtype, cfg.revision,
                                                         local_files_only=local_files_only),
        revision=cfg.revision)
    unet, vae, text_encoder, tokenizer, scheduler = components
    for module in (unet, vae, text_encoder):
        if module is not None:
            module.to(device).eval().requires_grad_(False)
    where = ModelSource(cfg.model, cfg.revision, commit, str(Path(source).expanduser().resolve()) if local else None)
    return DiffusionPrior(unet, vae, text_encoder, tokenizer, scheduler, device=device, dtype=dtype, source=where)


def resolve_model_alias(name: str) -> str:
    """`toy` is the toy world's prior shipped inside the package; any other name is itself."""
    if name != "toy":
        return name
    if not (TOY_PRIOR_DIR / "model_index.json").is_file():
        raise PriorLoadError(f"the toy prior is not in this installation ({TOY_PRIOR_DIR}); "
                             "build it with: python -m prolificli.toyworld.train_prior")
    return str(TOY_PRIOR_DIR)


def load_local_or_hub(source: str, what: str, option: str, load: Callable[[str, bool], T], *,
                      offline_hint: str = TINY_HINT, revision: str | None = None) -> T:
    """`load(source, local_files_only)` for a local directory or a Hugging Face hub id.

    The cache first; then, unless HF_HUB_OFFLINE is set or the hub does not answer one short
    request, the hub. Every failure is a one-line PriorLoadError starting with `what`; `option`
    is the flag that takes a local copy instead, `revision` the one asked for (for the advice).
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
    copy = REMOVED_FROM_HUB.get(source.lower())
    if copy is not None:  # the hub would answer 404: say why, and where the weights are now
        default = " (the default model)" if copy == PriorConfig.model else ""
        raise PriorLoadError(
            f"{what}: Stability AI removed it (with the rest of Stable Diffusion 2) from the Hugging Face hub in "
            f"November 2025, and it is not in the local cache. The same weights are published as a community "
            f"copy: --model {copy}{default}, or download it with `hf download {copy} --local-dir DIR` and pass "
            f"--model DIR.")
    pinned = f" --revision {revision}" if revision else ""
    advice = (f"Download it on a connected machine (hf download {source}{pinned} --local-dir DIR) and pass "
              f"{option} DIR ({offline_hint}).")
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


def _model_index(source: str, revision: str | None, local_files_only: bool) -> tuple[dict | None, str | None]:
    """(model_index.json as a dict, the hub commit it came from). A local directory: (its index
    or None, None)."""
    if Path(source).is_dir():
        index = Path(source) / "model_index.json"
        return (json.loads(index.read_text()) if index.is_file() else None), None
    from huggingface_hub import hf_hub_download

    path = Path(hf_hub_download(source, "model_index.json", revision=revision, local_files_only=local_files_only))
    # the cache keeps every file of a commit under snapshots/<commit>/: this one's folder is the commit
    return json.loads(path.read_text()), path.parent.name


def _has_component(source: str, index: dict | None, name: str) -> bool:
    if Path(source).is_dir():
        return (Path(source) / name).is_dir()
    entry = (index or {}).get(name)
    return isinstance(entry, list) and entry[:1] != [None]


def _load_components(source: str, display_name: str, dtype: torch.dtype, revision: str | None, *,
                     local_files_only: bool) -> tuple[tuple, str | None]:
    """((unet, vae or None, text_encoder, tokenizer, DDPMScheduler), hub commit or None), each
    component from its subfolder, all at the commit `revision` resolved to.

    Raises OSError/ValueError for what is not in the cache or on the hub (the caller decides
    whether to go online), PriorLoadError for a model that lacks a component."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    index, commit = _model_index(source, revision, local_files_only)
    missing = [name for name in REQUIRED_COMPONENTS if not _has_component(source, index, name)]
    if missing:
        folders = ", ".join(f"{name}/" for name in missing)
        raise PriorLoadError(
            f"cannot load model '{display_name}': it has no {folders} "
            f"(a diffusers text-to-image model needs unet/, text_encoder/, tokenizer/, scheduler/, and vae/ if latent)"
        )

    options = {"local_files_only": local_files_only, **({"revision": commit} if commit else {})}
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
    return (unet, vae, text_encoder, tokenizer, scheduler), commit
