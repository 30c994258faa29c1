"""What one optimisation step hands between its parts: the view it renders (cameras, the prompt
conditioning, the size) and what the render produced. Leaf types: this module imports nothing of
the package, so representations (scene/), distillers (distill/) and the loop (optimize.py) can
all use them without depending on each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal

from torch import Tensor

if TYPE_CHECKING:  # for the annotation only: at run time this module imports nothing of the package
    from .cameras import Cameras


@dataclass
class Conditioning:
    """What the diffusion models are conditioned on for one batch of renders.

    text_emb:       the prompt with its view suffix (y^c in the paper), [B,L,D]; the prior's condition.
    uncond_emb:     the negative / empty prompt, [B,L,D]; the prior's CFG baseline.
    camera:         c2w.flatten(1), [B,16]; the score model's camera condition (VSD only).
    score_text_emb: the prompt without the view suffix (y in Eq. 9: eps_phi(x_t, t, c, y) sees the
                    plain prompt and the camera, the prior sees y^c), [B,L,D]; as in the official
                    ProlificDreamer code. None: the score model uses text_emb.
    """

    text_emb: Tensor
    uncond_emb: Tensor
    camera: Tensor
    score_text_emb: Tensor | None = None


@dataclass
class View:
    """One training view: cameras, the prompt conditioning, the render size."""

    cameras: Cameras | None  # None in the 2D mode, which has no camera
    cond: Conditioning
    resolution: int


@dataclass
class Rendered:
    image: Tensor  # [B,C,H,W], channels first, in `space`
    # "rgb": colours in [0,1] that the prior encodes (every renderer); "prior": already the
    # prior's x0, latents or [-1,1] pixels (the 2D mode's particles, the Gaussian example)
    space: Literal["rgb", "prior"] = "rgb"
    extras: dict[str, Tensor] = field(default_factory=dict)  # opacity, depth, ... for regularisers
    # a deferred render: rgb and extras are graph-less leaves, and after the loss's backward this
    # carries their gradients on into the parameters (re-rendering in chunks with the graph)
    replay: Callable[[], None] | None = None
    logs: dict[str, float] = field(default_factory=dict)  # what the renderer reports (samples per ray)
