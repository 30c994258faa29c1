"""Multi-view renders of the toy objects, with captions, cameras and ground truth.

Renders use the NeRF stage's own camera distribution, renderer and background convention
(the toy recipe's solid white background), so the prior learns exactly the images the NeRF
stage can produce.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..cameras import Cameras, sample_cameras, view_suffix
from ..config import BackgroundConfig, CameraConfig, VolumeRenderConfig
from ..render.background import Background
from ..render.volume import RenderOutput, render
from .shapes import COLOURS, ToyObject, ToyObjectField, all_objects

BACKGROUND = BackgroundConfig(kind="solid", color=(1.0, 1.0, 1.0), random_color_prob=0.0)
# many samples: the ground truth's sharp density must not alias
GROUND_TRUTH_RENDER = VolumeRenderConfig(n_coarse=128, n_fine=64, chunk_rays=65536)


@torch.no_grad()
def render_object(obj: ToyObject, cameras: Cameras, resolution: int) -> RenderOutput:
    return render(ToyObjectField(obj), Background(BACKGROUND), cameras, resolution, resolution,
                  GROUND_TRUTH_RENDER, stratified=False)


def captions_for(obj: ToyObject) -> list[str]:
    """The full caption and the partial ones (which make ambiguous prompts multi-modal)."""
    return [obj.caption, f"a {obj.shape}", f"a {obj.colour} object", "an object"]


@dataclass
class ToyDataset:
    images: Tensor  # [N,H,W,3] uint8
    opacity: Tensor  # [N,H,W] uint8
    object_index: Tensor  # [N] into all_objects()
    c2w: Tensor  # [N,4,4]
    fovy: Tensor  # [N]
    suffix: list[str]  # view suffix per image ("front view", ...)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape_index(self) -> Tensor:
        return self.object_index // len(COLOURS)

    @property
    def colour_index(self) -> Tensor:
        return self.object_index % len(COLOURS)


def make_dataset(views_per_object: int, resolution: int, seed: int,
                 camera: CameraConfig | None = None) -> ToyDataset:
    camera = camera or CameraConfig()
    generator = torch.Generator().manual_seed(seed)
    images, opacity, index, c2w, fovy, suffix = [], [], [], [], [], []
    for i, obj in enumerate(all_objects()):
        cameras = sample_cameras(camera, views_per_object, generator=generator)
        out = render_object(obj, cameras, resolution)
        images.append((out.rgb.clamp(0, 1) * 255).round().to(torch.uint8))
        opacity.append((out.opacity[..., 0].clamp(0, 1) * 255).round().to(torch.uint8))
        index.append(torch.full((views_per_object,), i))
        c2w.append(cameras.c2w)
        fovy.append(cameras.fovy)
        suffix += view_suffix(cameras, camera)
    return ToyDataset(torch.cat(images), torch.cat(opacity), torch.cat(index), torch.cat(c2w), torch.cat(fovy),
                      suffix)

