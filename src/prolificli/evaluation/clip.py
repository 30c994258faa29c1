"""Text-image agreement for `prolific eval --clip`: CLIP, or the toy world's scorer in its place.

    scorer.similarity(images, prompts) -> [B,P]   how well each image matches each prompt
    scorer.features(images) -> [B,D] or None      image embeddings, for a Frechet distance on them

CLIP similarity is the cosine between image and text embeddings (the L2-VSD paper's CLIP score,
averaged over views). The toy scorer's is log p(shape and colour the prompt names | image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ConfigError

DEFAULT_CLIP = "openai/clip-vit-base-patch16"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the normalisation every OpenAI CLIP was trained with
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ToyClip:
    name = "toy"

    def __init__(self):
        from ..toyworld.scorer import load_scorer

        self.scorer = load_scorer()

    def similarity(self, images: Tensor, prompts: list[str]) -> Tensor:
        return torch.stack([self.scorer.similarity(images, p) for p in prompts], dim=1)

    def features(self, images: Tensor) -> Tensor | None:
        return None  # the scorer is a classifier: its features are no CLIP embedding


class HubClip:
    def __init__(self, source: str, device: str | torch.device = "cpu"):
        from transformers import CLIPModel, CLIPTokenizer

        from ..prior import PriorLoadError
        from ..prior.loading import load_local_or_hub

        def load(where: str, local_files_only: bool):
            return (CLIPModel.from_pretrained(where, local_files_only=local_files_only).eval(),
                    CLIPTokenizer.from_pretrained(where, local_files_only=local_files_only))

        # the prior's loader: the cache first, then one short probe of the hub, so an offline
        # machine fails at once instead of after huggingface_hub's retries
        try:
            self.model, self.tokenizer = load_local_or_hub(
                source, f"cannot load the CLIP model '{source}'", "--clip-model", load,
                offline_hint="or --clip-model toy in the toy world")
        except PriorLoadError as exc:
            advice = "" if "--clip-model" in str(exc) else \
                "; pass --clip-model with a local CLIP directory, or --clip-model toy in the toy world"
            raise ConfigError(f"{exc}{advice}") from None
        self.model.to(device).requires_grad_(False)
        self.name, self.device = source, torch.device(device)

    def _pixels(self, images: Tensor) -> Tensor:
        size = self.model.config.vision_config.image_size
        x = F.interpolate(images.float().clamp(0, 1), size=(size, size), mode="bicubic", align_corners=False,
                          antialias=True)
        mean = torch.tensor(CLIP_MEAN)[:, None, None]
        std = torch.tensor(CLIP_STD)[:, None, None]
        return ((x - mean) / std).to(self.device)

    @torch.no_grad()
    def features(self, images: Tensor, batch: int = 32) -> Tensor:
        out = [self.model.get_image_features(pixel_values=self._pixels(images[i : i + batch]))
               for i in range(0, images.shape[0], batch)]
        return torch.cat([_embedding(o) for o in out]).cpu()

    @torch.no_grad()
    def similarity(self, images: Tensor, prompts: list[str]) -> Tensor:
        tokens = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        text = _embedding(self.model.get_text_features(**tokens)).cpu()
        return F.normalize(self.features(images), dim=-1) @ F.normalize(text, dim=-1).T


def _embedding(output) -> Tensor:
    # transformers 5 may return a model output instead of a tensor
    return output if isinstance(output, Tensor) else output.pooler_output


def load_clip(source: str) -> ToyClip | HubClip:
    return ToyClip() if source == "toy" else HubClip(source)


def r_precision(similarity: Tensor, own: int) -> float:
    """Fraction of views [B,P] whose best-matching prompt among the P is their own (index `own`)."""
    return float((similarity.argmax(dim=1) == own).float().mean())
