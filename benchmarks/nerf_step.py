"""Seconds per NeRF-stage optimisation step, and peak memory, at several render resolutions.

One step is what `prolific nerf` repeats 25k times: sample a camera, volume-render the particle
(64 coarse + 32 fine samples per ray, the paper's hash grid), encode to the prior's space, the
VSD gradient (prior with CFG + LoRA score model), the score-model update and the AdamW step.

    python benchmarks/nerf_step.py                                  # CPU, tiny random prior, 64/128/256
    python benchmarks/nerf_step.py --device cuda --model sd21-random --resolutions 64 128 256 512

`--model tiny` builds the tiny random-weight model; `sd21-random` builds a UNet and VAE with
Stable Diffusion 2.1-base's architecture and random weights (fp16 on CUDA), so timings match the
real model without its weights. Each resolution runs in its own process, so the peak memory
(CUDA: max allocated; CPU: max resident set) is that configuration's own.
Prints a table and writes benchmarks/results/nerf_step.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def build_prior(model: str, device: str):
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from prolificli.config import PriorConfig
    from prolificli.prior import DiffusionPrior, load_prior
    from prolificli.prior.tiny import build_tiny_model, write_tokenizer_files

    if model == "tiny":
        folder = Path(tempfile.mkdtemp()) / "tiny"
        build_tiny_model(folder)
        return load_prior(PriorConfig(model=str(folder), device=device))
    if model != "sd21-random":
        return load_prior(PriorConfig(model=model, device=device))
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    unet = UNet2DConditionModel(  # stabilityai/stable-diffusion-2-1-base unet/config.json
        sample_size=64, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
        use_linear_projection=True, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512, scaling_factor=0.18215)
    # the text encoder only runs once per prompt (cached): a small one with the right width suffices
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=1024, intermediate_size=1024, num_hidden_layers=2,
                                                num_attention_heads=16, vocab_size=1000, max_position_embeddings=77))
    tokenizer_dir = Path(tempfile.mkdtemp())
    write_tokenizer_files(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, prediction_type="epsilon")
    modules = [m.to(device, dtype).eval().requires_grad_(False) for m in (unet, vae, text_encoder)]
    return DiffusionPrior(*modules[:2], modules[2], tokenizer, scheduler, device=torch.device(device), dtype=dtype)


def measure_one(model: str, device: str, resolution: int, method: str, steps: int, warmup: int) -> dict:
    import torch

    from prolificli.config import build_recipe
    from prolificli.optimize import optimization_step
    from prolificli.stages.common import build_distiller
    from prolificli.stages.nerf import NeRFParticles

    recipe = build_recipe(None, [f"guidance.method={method}", f"nerf.resolution={resolution}",
                                 "nerf.resolution_milestones=[]", f"prior.device={device}"])
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    prior = build_prior(model, device)
    particles = NeRFParticles(recipe, prior, "an elephant skull", generator)
    distiller = build_distiller(recipe.guidance, recipe, prior)
    cuda = device.startswith("cuda")

    def step(i: int) -> None:
        optimization_step(particles, prior.encode_images, distiller, i, generator)
        if cuda:
            torch.cuda.synchronize()

    for i in range(warmup):
        step(i)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps):
        tic = time.perf_counter()
        step(warmup + i)
        times.append(time.perf_counter() - tic)
    if cuda:
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
        memory_kind = "cuda max allocated"
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        memory_kind = "max RSS"
    times.sort()
    return {"model": model, "device": device, "method": method, "resolution": resolution, "steps_timed": steps,
            "seconds_per_step_median": times[len(times) // 2], "seconds_per_step_min": times[0],
            "peak_memory_mib": round(peak_mib, 1), "memory_kind": memory_kind}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny | sd21-random | a diffusers dir or hub id")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--method", default="vsd", choices=["vsd", "sds"])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per resolution")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: one resolution
    args = parser.parse_args()

    if args.one is not None:
        print(json.dumps(measure_one(args.model, args.device, args.one, args.method, args.steps, args.warmup)))
        return

    rows = []
    for resolution in args.resolutions:
        cmd = [sys.executable, __file__, "--one", str(resolution), "--model", args.model, "--device", args.device,
               "--method", args.method, "--steps", str(args.steps), "--warmup", str(args.warmup)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
            rows.append({"resolution": resolution, "error": tail[0]})
            print(f"{resolution:>5}  failed: {tail[0]}", file=sys.stderr)
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    print(f"\nNeRF-stage {args.method.upper()} step, model={args.model}, device={args.device}, "
          f"{platform.processor() or platform.machine()}")
    print(f"{'res':>5} | {'s/step (median)':>15} | {'s/step (min)':>12} | {'peak MiB':>9} | memory")
    for row in rows:
        if "error" in row:
            print(f"{row['resolution']:>5} | failed: {row['error']}")
            continue
        print(f"{row['resolution']:>5} | {row['seconds_per_step_median']:>15.3f} | "
              f"{row['seconds_per_step_min']:>12.3f} | {row['peak_memory_mib']:>9.0f} | {row['memory_kind']}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "nerf_step.json"
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
