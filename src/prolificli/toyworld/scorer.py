"""The toy scorer: the offline stand-in for CLIP in the toy world.

A small CNN with two heads, shape (6) and colour (6), trained on the same renders as the toy
prior. A prompt names a shape, a colour, both or neither; an image matches it when the
predicted attributes it names are right. `similarity` is the CLIP-like score: the sum of the
log-probabilities of the attributes the prompt names.

    python -m prolificli.toyworld.scorer        # train and save to src/prolificli/assets/toy-scorer
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .shapes import COLOURS, SHAPES, parse_prompt

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_DIR = ASSETS / "toy-scorer"
INPUT_SIZE = 32


class ToyScorer(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                                 nn.AvgPool2d(2))

        self.features = nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 2 * width),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.shape_head = nn.Linear(2 * width, len(SHAPES))
        self.colour_head = nn.Linear(2 * width, len(COLOURS))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images [B,3,H,W] in [0,1] -> (shape logits [B,6], colour logits [B,6])."""
        if images.shape[-1] != INPUT_SIZE or images.shape[-2] != INPUT_SIZE:
            images = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True,
                                   align_corners=False)
        h = self.features(images * 2 - 1)
        return self.shape_head(h), self.colour_head(h)

    @torch.no_grad()
    def classify(self, images: Tensor) -> tuple[list[str], list[str]]:
        shape_logits, colour_logits = self(images)
        colours = list(COLOURS)
        return ([SHAPES[i] for i in shape_logits.argmax(-1).tolist()],
                [colours[i] for i in colour_logits.argmax(-1).tolist()])

    @torch.no_grad()
    def matches(self, images: Tensor, prompt: str) -> Tensor:
        """[B] bool: does each image show what the prompt names (its shape and/or colour)?"""
        shape, colour = parse_prompt(prompt)
        shapes, colours = self.classify(images)
        return torch.tensor([(shape is None or s == shape) and (colour is None or c == colour)
                             for s, c in zip(shapes, colours)])

    @torch.no_grad()
    def similarity(self, images: Tensor, prompt: str) -> Tensor:
        """[B] log p(named attributes | image): the toy world's CLIP score (0 is a perfect match)."""
        shape, colour = parse_prompt(prompt)
        shape_logits, colour_logits = self(images)
        score = torch.zeros(images.shape[0])
        if shape is not None:
            score += shape_logits.log_softmax(-1)[:, SHAPES.index(shape)]
        if colour is not None:
            score += colour_logits.log_softmax(-1)[:, list(COLOURS).index(colour)]
        return score


def load_scorer(directory: Path | str = DEFAULT_DIR) -> ToyScorer:
    directory = Path(directory)
    if not (directory / "model.safetensors").is_file():
        raise FileNotFoundError(f"no toy scorer at {directory}; train it with: python -m prolificli.toyworld.scorer")
    config = json.loads((directory / "config.json").read_text())
    scorer = ToyScorer(width=config["width"])
    scorer.load_state_dict(load_file(directory / "model.safetensors"))
    return scorer.eval().requires_grad_(False)


def augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """Small shifts, blur and noise, so renders of imperfect NeRFs are still read for what they show."""
    b = images.shape[0]
    shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
    images = torch.roll(images, shifts=shift, dims=(2, 3))
    blur = torch.rand(b, 1, 1, 1, generator=generator) < 0.3
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    images = torch.where(blur, blurred, images)
    noise = torch.randn(images.shape, generator=generator) * 0.03 * torch.rand(b, 1, 1, 1, generator=generator)
    return (images + noise).clamp(0, 1)


def main(argv: list[str] | None = None) -> None:
    from .train_prior import load_or_make_data

    parser = argparse.ArgumentParser(prog="python -m prolificli.toyworld.scorer", description="Train the toy scorer.")
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--workdir", type=Path, default=Path("toyworld-work/prior"), help="shared render cache")
    parser.add_argument("--views", type=int, default=100)
    parser.add_argument("--heldout-views", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    args.workdir.mkdir(parents=True, exist_ok=True)
    train = load_or_make_data(args.workdir.resolve(), args.views, args.seed, "train")
    heldout = load_or_make_data(args.workdir.resolve(), args.heldout_views, args.seed + 1000, "heldout")
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    scorer = ToyScorer()
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=2e-3, weight_decay=1e-4)
    to_float = lambda x: x.permute(0, 3, 1, 2).float() / 255  # noqa: E731
    tic = time.time()
    for step in range(args.steps):
        index = torch.randint(0, len(train), (args.batch,), generator=generator)
        images = augment(to_float(train.images[index]), generator)
        shape_logits, colour_logits = scorer(images)
        loss = F.cross_entropy(shape_logits, train.shape_index[index]) + \
            F.cross_entropy(colour_logits, train.colour_index[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    scorer.eval()
    with torch.no_grad():
        shape_logits, colour_logits = scorer(to_float(heldout.images))
    shape_ok = shape_logits.argmax(-1) == heldout.shape_index
    colour_ok = colour_logits.argmax(-1) == heldout.colour_index
    result = {"heldout_views": len(heldout), "shape_accuracy": shape_ok.float().mean().item(),
              "colour_accuracy": colour_ok.float().mean().item(),
              "accuracy": (shape_ok & colour_ok).float().mean().item(), "steps": args.steps,
              "seed": args.seed, "train_seconds": round(time.time() - tic, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(scorer.state_dict(), args.out / "model.safetensors")
    (args.out / "config.json").write_text(json.dumps({"width": 32, "input_size": INPUT_SIZE, **result}, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
