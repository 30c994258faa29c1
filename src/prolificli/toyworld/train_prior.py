"""Train the toy world's text-to-image diffusion prior and save it in diffusers layout.

    python -m prolificli.toyworld.train_prior                 # -> src/prolificli/assets/toy-prior
    python -m prolificli.toyworld.train_prior --steps 200 --out /tmp/toy-prior   # a quick one

A pixel-space model (no VAE): 32x32 RGB, a small UNet2DConditionModel with cross-attention at
8x8, and a small CLIP text encoder trained jointly from scratch on the toy captions. Pixel space
because a VAE would have to be trained too and would add an encode/decode to every NeRF step,
while the UNet at 32x32 with attention only at 8x8 costs about as much as one at 16x16 latents
with attention at every level (0.9 s vs 1.0 s per batch-64 training step on 2 CPU cores).

The data are renders of the 36 objects from the NeRF stage's camera distribution; a second set
of views (another seed) is held out and its diffusion loss is reported. Training checkpoints go to
--workdir every --checkpoint-every steps and a rerun resumes from there, so a long CPU training
can be stopped and continued. Everything is seeded: the same command gives the same weights.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .data import captions_for, make_dataset
from .shapes import COLOURS, SHAPES, all_objects

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_OUT = ASSETS / "toy-prior"
RESOLUTION = 32
TEXT_HIDDEN = 64
MAX_TOKENS = 16
WORDS = ["a", "an", "object", *SHAPES, *COLOURS, "front", "side", "back", "overhead", "view"]
# caption levels: full, "a {shape}", "a {colour} object", "an object"
CAPTION_PROBS = (0.55, 0.15, 0.15, 0.15)
SUFFIX_PROB = 0.9  # most captions name the view, as the NeRF stage's prompts do
UNCOND_PROB = 0.1  # empty caption, for classifier-free guidance


def build_components(seed: int, tokenizer):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=RESOLUTION, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN, attention_head_dim=8, norm_num_groups=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=TEXT_HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=1000, max_position_embeddings=MAX_TOKENS, projection_dim=TEXT_HIDDEN,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    # cosine schedule: the usual choice for pixel-space models (SD's scaled_linear suits latents)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                              prediction_type="v_prediction")
    return unet, text_encoder, scheduler


def sample_captions(object_index: torch.Tensor, suffixes: list[str], generator: torch.Generator) -> list[str]:
    objects = all_objects()
    levels = torch.multinomial(torch.tensor(CAPTION_PROBS), len(object_index), replacement=True, generator=generator)
    u = torch.rand(len(object_index), 2, generator=generator)
    captions = []
    for i, (index, level) in enumerate(zip(object_index.tolist(), levels.tolist())):
        caption = captions_for(objects[index])[level]
        if u[i, 0] < SUFFIX_PROB:
            caption = f"{caption}, {suffixes[i]}"
        captions.append("" if u[i, 1] < UNCOND_PROB else caption)
    return captions


def diffusion_loss(unet, text_encoder, tokenizer, alphas_cumprod, images, captions, generator):
    """v-prediction loss on a batch of uint8 images [B,H,W,3] with their captions."""
    x0 = images.permute(0, 3, 1, 2).float() / 127.5 - 1
    tokens = tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                       return_tensors="pt").input_ids
    text = text_encoder(tokens)[0]
    t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],), generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    abar = alphas_cumprod[t].view(-1, 1, 1, 1)
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    x_t = alpha * x0 + sigma * eps
    v = alpha * eps - sigma * x0
    return F.mse_loss(unet(x_t, t, text).sample, v)


def save_diffusers_layout(out: Path, unet, text_encoder, tokenizer_words: list[str], scheduler, info: dict) -> None:
    import diffusers

    from ..prior.tiny import write_tokenizer_files

    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet")
    text_encoder.save_pretrained(out / "text_encoder")
    write_tokenizer_files(out / "tokenizer", tokenizer_words, MAX_TOKENS)
    scheduler.save_pretrained(out / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": [None, None],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "DDPMScheduler"], "safety_checker": [None, None],
             "feature_extractor": [None, None], "requires_safety_checker": False}
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    (out / "training.json").write_text(json.dumps(info, indent=2))


def load_or_make_data(workdir: Path, views: int, seed: int, name: str, camera=None):
    """Rendered views, cached in the work directory (rendering 3600 views takes minutes on a CPU).
    `camera`: the CameraConfig to sample views from (default: the NeRF stage's defaults); a work
    directory holds renders of one camera distribution only."""
    from .data import ToyDataset

    tag = ""
    if camera is not None:  # renders of another camera distribution must not be read from the cache
        from ..config import to_dict

        tag = "-" + hashlib.sha256(json.dumps(to_dict(camera), sort_keys=True).encode()).hexdigest()[:8]
    path = workdir / f"{name}-{views}-{RESOLUTION}-{seed}{tag}.safetensors"
    if path.is_file():
        t = load_file(path)
        meta = json.loads((path.with_suffix(".json")).read_text())
        return ToyDataset(t["images"], t["opacity"], t["object_index"], t["c2w"], t["fovy"], meta["suffix"])
    data = make_dataset(views, RESOLUTION, seed, camera=camera)
    save_file({"images": data.images, "opacity": data.opacity, "object_index": data.object_index,
               "c2w": data.c2w.contiguous(), "fovy": data.fovy}, path)
    path.with_suffix(".json").write_text(json.dumps({"suffix": data.suffix}))
    return data


def main(argv: list[str] | None = None) -> None:
    from transformers import CLIPTokenizer

    from ..prior.tiny import write_tokenizer_files

    parser = argparse.ArgumentParser(prog="python -m prolificli.toyworld.train_prior", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--workdir", type=Path, default=Path("toyworld-work/prior"))
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--views", type=int, default=100, help="training views per object")
    parser.add_argument("--heldout-views", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--recipe", default=None, help="render the data from this recipe's camera distribution "
                                                       "(default: the NeRF stage's defaults)")
    args = parser.parse_args(argv)
    camera = None
    if args.recipe is not None:
        from ..methods import build_recipe

        camera = build_recipe(args.recipe).camera

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tic = time.time()
    train = load_or_make_data(workdir, args.views, args.seed, "train", camera)
    heldout = load_or_make_data(workdir, args.heldout_views, args.seed + 1000, "heldout", camera)
    print(f"data: {len(train)} training and {len(heldout)} held-out views ({time.time() - tic:.0f} s)", flush=True)

    write_tokenizer_files(workdir / "tokenizer", WORDS, MAX_TOKENS)
    tokenizer = CLIPTokenizer.from_pretrained(workdir / "tokenizer")
    unet, text_encoder, scheduler = build_components(args.seed, tokenizer)
    modules = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder})
    ema = copy.deepcopy(modules).requires_grad_(False)
    optimizer = torch.optim.AdamW(modules.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = min(200, args.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(warmup, 1)) *
                                                 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    generator = torch.Generator().manual_seed(args.seed)
    alphas_cumprod = scheduler.alphas_cumprod.float()
    start = 0
    ckpt = workdir / "checkpoint.safetensors"
    if ckpt.is_file():
        state = load_file(ckpt)
        modules.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
        ema.load_state_dict({k[len("ema."):]: v for k, v in state.items() if k.startswith("ema.")})
        optimizer.load_state_dict(torch.load(workdir / "optimizer.pt", weights_only=True))
        meta = json.loads((workdir / "checkpoint.json").read_text())
        start = meta["step"]
        generator.set_state(state["rng"])
        for _ in range(start):
            schedule.step()
        print(f"resuming from step {start}", flush=True)

    log = open(workdir / "log.jsonl", "a")
    eval_generator = torch.Generator()
    tic = time.time()
    for step in range(start, args.steps):
        index = torch.randint(0, len(train), (args.batch,), generator=generator)
        captions = sample_captions(train.object_index[index], [train.suffix[i] for i in index.tolist()], generator)
        loss = diffusion_loss(unet, text_encoder, tokenizer, alphas_cumprod, train.images[index], captions, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), modules.parameters()):
                p_ema.lerp_(p, 1 - args.ema)
        done = step + 1
        if done % args.checkpoint_every == 0 or done == args.steps:
            with torch.no_grad():  # held-out loss of the EMA weights, same draws every time
                eval_generator.manual_seed(12345)
                captions = sample_captions(heldout.object_index, heldout.suffix, eval_generator)
                heldout_loss = float(diffusion_loss(ema["unet"], ema["text_encoder"], tokenizer, alphas_cumprod,
                                                    heldout.images, captions, eval_generator))
            record = {"step": done, "loss": float(loss.detach()), "heldout_loss": heldout_loss,
                      "lr": schedule.get_last_lr()[0], "seconds": round(time.time() - tic, 1)}
            print(json.dumps(record), flush=True)
            log.write(json.dumps(record) + "\n")
            log.flush()
            tensors = {f"model.{k}": v for k, v in modules.state_dict().items()}
            tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
            tensors["rng"] = generator.get_state()
            save_file({k: v.contiguous() for k, v in tensors.items()}, workdir / "checkpoint.safetensors.tmp")
            torch.save(optimizer.state_dict(), workdir / "optimizer.pt")
            (workdir / "checkpoint.safetensors.tmp").replace(ckpt)
            (workdir / "checkpoint.json").write_text(json.dumps({"step": done}))
            info = {"steps": done, "batch": args.batch, "lr": args.lr, "views": args.views, "seed": args.seed,
                    "ema": args.ema, "resolution": RESOLUTION, "heldout_loss": heldout_loss,
                    "train_seconds_this_session": round(time.time() - tic, 1),
                    "camera_recipe": args.recipe}
            save_diffusers_layout(args.out, ema["unet"], ema["text_encoder"], WORDS, scheduler, info)
    print(f"saved {args.out}", flush=True)


if __name__ == "__main__":
    main()
