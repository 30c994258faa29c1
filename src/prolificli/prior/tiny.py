"""A tiny random-weight text-to-image diffusion model in diffusers layout, for tests and plumbing.

It has every part a Stable Diffusion checkpoint has (UNet2DConditionModel, AutoencoderKL,
CLIPTextModel, a byte-level BPE CLIPTokenizer, a DDPM noise schedule) at a size that builds in
about a second on a CPU, and it is saved exactly as `save_pretrained` saves the real ones, so it
goes through the same loader (`prolificli.prior.load_prior`). It checks shapes, gradients and
numerics, never image quality.

    python -m prolificli.prior.tiny DIR [--pixel] [--prediction-type v_prediction]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

MAX_PROMPT_TOKENS = 77  # CLIP's context length, kept so prompts are padded like Stable Diffusion's
TEXT_HIDDEN_SIZE = 32
VOCAB_SIZE = 1000  # embedding rows; the tokenizer uses fewer ids (bytes, merges, specials)

# A few byte-pair merges so that the tokenizer does merge (common English pairs and words of
# the prompts in the tests); everything else falls back to single bytes.
_MERGES = [
    ("t", "h"), ("th", "e</w>"), ("a", "n</w>"), ("e", "r</w>"), ("i", "n"), ("o", "n</w>"),
    ("e", "l"), ("a", "n"), ("s", "k"), ("u", "l"), ("ul", "l</w>"), ("sk", "ull</w>"),
    ("v", "i"), ("e", "w</w>"), ("vi", "ew</w>"), ("f", "r"), ("o", "n"), ("fr", "on"),
    ("fron", "t</w>"),
]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def _word_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges that build each word left to right into one token ("cone</w>")."""
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        prefix = pieces[0]
        for piece in pieces[1:]:
            merges.append((prefix, piece))
            prefix += piece
    return list(dict.fromkeys(merges))


def write_tokenizer_files(folder: Path, words: list[str] = (), max_length: int = MAX_PROMPT_TOKENS) -> None:
    """vocab.json + merges.txt + tokenizer_config.json laid out like CLIP's (bytes, bytes</w>,
    merges, then the two special tokens). `words` get merges that make each of them one token."""
    folder.mkdir(parents=True, exist_ok=True)
    merges_list = _MERGES + _word_merges([w.lower() for w in words])
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(pair) for pair in merges_list]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    assert len(vocab) <= VOCAB_SIZE
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    merges = "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges_list) + "\n"
    (folder / "merges.txt").write_text(merges, encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


@torch.no_grad()
def _latent_scaling_factor(vae: AutoencoderKL, image_size: int, seed: int) -> float:
    """1 / std of the latents of smooth random images: how Stable Diffusion's 0.18215 was chosen,
    so that scaled latents have roughly unit variance like the noise they are mixed with."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(8, 3, 4, 4, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=image_size, mode="bilinear", align_corners=False)
    latents = vae.encode(2 * images - 1).latent_dist.mean
    return float(1.0 / latents.std().clamp_min(1e-6))


def build_tiny_model(
    path: str | Path, *, latent: bool = True, prediction_type: str = "epsilon", seed: int = 0
) -> Path:
    """Write a tiny random model to `path` (created) and return it.

    Latent: a 2x VAE (32x32 RGB <-> 4x16x16) and a UNet on 16x16 latents. Pixel (`latent=False`):
    no VAE, the UNet works on 3x32x32 images directly. Either way the prior's image_size is 32.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    image_size = 32

    unet = UNet2DConditionModel(
        sample_size=image_size // 2 if latent else image_size,
        in_channels=4 if latent else 3,
        out_channels=4 if latent else 3,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN_SIZE,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    unet.save_pretrained(path / "unet")

    if latent:
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(16, 32),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=image_size,
        )
        vae.register_to_config(scaling_factor=_latent_scaling_factor(vae, image_size, seed))
        vae.save_pretrained(path / "vae")

    write_tokenizer_files(path / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    text_config = CLIPTextConfig(
        hidden_size=TEXT_HIDDEN_SIZE,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=MAX_PROMPT_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=TEXT_HIDDEN_SIZE,
    )
    CLIPTextModel(text_config).save_pretrained(path / "text_encoder")

    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=prediction_type,
    )
    scheduler.save_pretrained(path / "scheduler")

    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"] if latent else [None, None],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (path / "model_index.json").write_text(json.dumps(model_index, indent=2))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m prolificli.prior.tiny",
        description="Write a tiny random-weight diffusion model in diffusers layout (for tests).",
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("--pixel", action="store_true", help="pixel-space model (no VAE)")
    parser.add_argument(
        "--prediction-type", default="epsilon", choices=["epsilon", "v_prediction", "sample"]
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build_tiny_model(
        args.directory, latent=not args.pixel, prediction_type=args.prediction_type, seed=args.seed
    )
    print(path)


if __name__ == "__main__":
    main()
