"""Seconds per NeRF-stage optimisation step, its parts, and peak memory, at several render resolutions.

One step is what `prolific nerf` repeats 25k times: sample a camera, volume-render the particle
(64 coarse + 32 fine samples per ray, the paper's hash grid), encode to the prior's space, the
VSD gradient (prior with CFG + LoRA score model), the score-model update and the AdamW step.
Per resolution it reports the seconds of each part (render: without a graph when deferred;
distill: encode + prior + score model, less the score-model update; backward: through the
encoder, and through the render when not deferred; replay: deferred re-render + backward; lora:
the score-model update; step: the AdamW step of theta), the samples per ray evaluated with
gradients, and the peak memory. With --flops, one extra untimed step counts the FLOPs of the
prior side (encode, distill and its backward, the render deferred so that none of its work is
counted) with torch.utils.flop_counter, and the table gives the measured step time against
FLOPs / --peak-tflops.

    python benchmarks/nerf_step.py                                  # CPU, tiny random prior, 64/128/256
    python benchmarks/nerf_step.py --resolutions 128 256 512        # the CPU memory check
    python benchmarks/nerf_step.py --device cuda --model sd21-random --resolutions 64 512 --flops
    python benchmarks/nerf_step.py --model sd21-random --resolutions 512 --steps 1 --warmup 0 --dtype bfloat16
    python benchmarks/nerf_step.py --resolutions 512 --gaussians 10000 100000 300000   # splats beside the NeRF

With --gaussians, each resolution also runs a Gaussian-splat particle (scene.representation:
gaussians, from the object init) of each of those counts, each in its own process: "render" is
then the rasterizer's forward pass and "backward" includes its backward pass (no replay).

`--model tiny` builds the tiny random-weight model; `sd21-random` builds a UNet and VAE with
Stable Diffusion 2.1-base's architecture and random weights (fp16 on CUDA), so timings match the
real model without its weights. Each resolution runs in its own process, so the peak memory
(CUDA: max allocated; CPU: max resident set) is that configuration's own; a process whose
resident set passes --max-rss-gib is stopped and reported as such (the machine has no swap).
Prints a table and writes benchmarks/results/nerf_step.json (or --out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def build_prior(model: str, device: str, dtype_name: str = "auto"):
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from prolificli.config import PriorConfig
    from prolificli.prior import DiffusionPrior, load_prior
    from prolificli.prior.loading import resolve_dtype
    from prolificli.prior.tiny import build_tiny_model, write_tokenizer_files

    if model == "tiny":
        folder = Path(tempfile.mkdtemp()) / "tiny"
        build_tiny_model(folder)
        return load_prior(PriorConfig(model=str(folder), device=device, dtype=dtype_name))
    if model != "sd21-random":
        return load_prior(PriorConfig(model=model, device=device, dtype=dtype_name))
    dtype = resolve_dtype(dtype_name, torch.device(device))  # auto: fp16 on CUDA, fp32 on CPU
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


PARTS = ("render", "distill", "backward", "replay", "lora", "step")
# dense fp16/bf16 tensor-core peak of one H100/H200 SXM, in TFLOP/s
DEFAULT_PEAK_TFLOPS = {"cuda": 989.0}


class PartTimer:
    """optimization_step's `timer`: seconds per part, synchronising CUDA around each."""

    def __init__(self, cuda: bool):
        self.cuda, self.seconds = cuda, {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        tic = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - tic


def time_score_model_update(distiller, timer: PartTimer) -> None:
    """Time VSD's score-model update (its gradient and AdamW step) as the part "lora"; it runs
    inside the distiller's call, so "distill" is reported without it."""
    if not hasattr(distiller, "score_model_gradient"):
        return
    gradient, step = distiller.score_model_gradient, distiller.optimizer.step

    def timed(fn):
        def run(*args, **kwargs):
            with timer("lora"):
                return fn(*args, **kwargs)
        return run

    distiller.score_model_gradient, distiller.optimizer.step = timed(gradient), timed(step)


def measure_one(model: str, device: str, dtype: str, resolution: int, method: str, steps: int, warmup: int,
                overrides: list[str], flops: bool, gaussians: int = 0) -> dict:
    import torch

    from prolificli.methods import build_recipe
    from prolificli.optimize import device_generator, optimization_step
    from prolificli.render.volume import use_deferred
    from prolificli.methods import build_distiller
    from prolificli.stages.nerf import make_problem

    splats = [f"scene.representation=gaussians", f"gaussians.count={gaussians}"] if gaussians else []
    recipe = build_recipe(None, [f"guidance.method={method}", f"nerf.resolution={resolution}",
                                 "nerf.resolution_milestones=[]", f"prior.device={device}", *splats, *overrides])
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    prior = build_prior(model, device, dtype)
    tensor_generator = device_generator(generator, prior.device)
    particles = make_problem(recipe, prior, "an elephant skull", generator, tensor_generator)
    distiller = build_distiller(recipe.guidance, recipe, prior)
    cuda = device.startswith("cuda")
    timer = PartTimer(cuda)
    time_score_model_update(distiller, timer)

    def step(i: int) -> dict:
        logs = optimization_step(particles, prior.encode_images, distiller, i, generator,
                                 tensor_generator=tensor_generator, timer=timer)
        if cuda:
            torch.cuda.synchronize()
        return logs

    for i in range(warmup):
        step(i)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, parts, samples = [], [], []
    for i in range(steps):
        timer.seconds = {}
        tic = time.perf_counter()
        logs = step(warmup + i)
        times.append(time.perf_counter() - tic)
        seconds = dict(timer.seconds)
        seconds["distill"] = seconds.get("distill", 0.0) - seconds.get("lora", 0.0)
        parts.append(seconds)
        samples.append(float(logs.get("samples_per_ray", float("nan"))))
    if cuda:
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
        memory_kind = "cuda max allocated"
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        memory_kind = "max RSS"
    order = sorted(range(steps), key=lambda k: times[k])
    median = order[len(order) // 2]
    row = {"representation": recipe.scene.representation, "gaussians": gaussians, "model": model, "device": device, "dtype": str(prior.dtype).removeprefix("torch."), "method": method, "resolution": resolution, "steps_timed": steps,
           "deferred": not gaussians and use_deferred(recipe.nerf.render, recipe.nerf.batch_size * resolution**2),
           "seconds_per_step_median": times[median], "seconds_per_step_min": times[order[0]],
           "part_seconds": {name: parts[median].get(name, 0.0) for name in PARTS},
           "samples_per_ray": sum(samples) / len(samples),
           "peak_memory_mib": round(peak_mib, 1), "memory_kind": memory_kind, "overrides": overrides}
    if flops:
        row["prior_side_flops"] = count_prior_flops(particles, prior, distiller, tensor_generator, warmup + steps)
    return row


def count_prior_flops(particles, prior, distiller, generator, step: int) -> float:
    """FLOPs of one step's prior side: encode, the distiller (CFG pair, score-model pass and its
    update) and the backward through the encoder, with the render deferred and left out."""
    import dataclasses

    from torch.utils.flop_counter import FlopCounterMode

    render_cfg = particles.recipe.nerf.render
    particles.recipe.nerf.render = dataclasses.replace(render_cfg, deferred="always")
    try:
        view = particles.sample_view(step)
        rendered = particles.render(0, view, step)
        with FlopCounterMode(display=False) as counter:
            x0 = prior.encode_images(rendered.image)
            out = distiller(x0, view.cond, step, generator=generator)
            out.loss.backward()
    finally:
        particles.recipe.nerf.render = render_cfg
    return float(counter.get_total_flops())


def run_child(cmd: list[str], max_rss_gib: float) -> tuple[int, str, str, float]:
    """Run one measurement; stop it if its resident set passes max_rss_gib. (rc, stdout, stderr, max RSS GiB)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        peak = 0.0
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as status:
                    rss_kib = next((int(line.split()[1]) for line in status if line.startswith("VmRSS")), 0)
            except (OSError, StopIteration):
                rss_kib = 0
            peak = max(peak, rss_kib / 2**20)
            if peak > max_rss_gib:
                proc.kill()
                proc.wait()
                return -9, "", f"stopped: resident set passed {max_rss_gib:g} GiB", peak
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny | sd21-random | a diffusers dir or hub id")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="the prior's (auto: fp16 on CUDA, fp32 on CPU); the LoRA, camera MLP and renderer stay fp32")
    parser.add_argument("--method", default="vsd", choices=["vsd", "sds", "l2vsd", "l-vsd", "esd"])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per resolution")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override, e.g. nerf.render.deferred=never (repeatable)")
    parser.add_argument("--flops", action="store_true", help="count the prior side's FLOPs (one extra step)")
    parser.add_argument("--peak-tflops", type=float, help="device peak for the FLOPs ratio (default: 989 on CUDA)")
    parser.add_argument("--max-rss-gib", type=float, default=20.0, help="stop a measurement past this resident set")
    parser.add_argument("--out", type=Path, default=RESULTS / "nerf_step.json")
    parser.add_argument("--gaussians", type=int, nargs="*", default=[],
                        help="also a Gaussian-splat particle of each of these counts, per resolution")
    parser.add_argument("--skip-nerf", action="store_true", help="only the --gaussians rows")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: one resolution
    parser.add_argument("--one-gaussians", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one is not None:
        print(json.dumps(measure_one(args.model, args.device, args.dtype, args.one, args.method, args.steps, args.warmup,
                                     args.overrides, args.flops, args.one_gaussians)))
        return

    peak_tflops = args.peak_tflops or DEFAULT_PEAK_TFLOPS.get(args.device.split(":")[0])
    rows = []
    counts = args.gaussians if args.skip_nerf else [0, *args.gaussians]
    for resolution, gaussians in [(r, g) for r in args.resolutions for g in counts]:
        cmd = [sys.executable, __file__, "--one", str(resolution), "--one-gaussians", str(gaussians),
               "--model", args.model, "--device", args.device,
               "--dtype", args.dtype,
               "--method", args.method, "--steps", str(args.steps), "--warmup", str(args.warmup),
               *(["--flops"] if args.flops else []), *(f"--set={o}" for o in args.overrides)]
        rc, stdout, stderr, peak_gib = run_child(cmd, args.max_rss_gib)
        if rc != 0:
            tail = stderr.strip().splitlines()[-1:] or ["?"]
            rows.append({"resolution": resolution, "gaussians": gaussians, "error": tail[0],
                         "max_rss_gib_seen": round(peak_gib, 2)})
            print(f"{resolution:>5}  failed: {tail[0]}", file=sys.stderr)
            continue
        row = json.loads(stdout.strip().splitlines()[-1])
        if "prior_side_flops" in row and peak_tflops:
            floor = row["prior_side_flops"] / (peak_tflops * 1e12)
            row.update(peak_tflops=peak_tflops, floor_seconds=floor,
                       step_over_floor=row["seconds_per_step_median"] / floor)
        rows.append(row)

    print(f"\nNeRF-stage {args.method.upper()} step, model={args.model}, device={args.device}, dtype={args.dtype}, "
          f"{platform.processor() or platform.machine()}" + (f", overrides {args.overrides}" if args.overrides else ""))
    print(f"{'res':>5} | {'particle':>12} | {'deferred':>8} | {'s/step':>7} | " + " | ".join(f"{p:>8}" for p in PARTS)
          + f" | {'samples/ray':>11} | {'peak MiB':>9} | {'TFLOP':>6} | {'x floor':>7}")
    for row in rows:
        if "error" in row:
            print(f"{row['resolution']:>5} | failed: {row['error']} (max RSS seen {row['max_rss_gib_seen']} GiB)")
            continue
        flops = row.get("prior_side_flops")
        particle = f"{row['gaussians']:,} splats" if row.get("gaussians") else "NeRF"
        print(f"{row['resolution']:>5} | {particle:>12} | {str(row['deferred']):>8} | {row['seconds_per_step_median']:>7.3f} | "
              + " | ".join(f"{row['part_seconds'][p]:>8.3f}" for p in PARTS)
              + f" | {row['samples_per_ray']:>11.1f} | {row['peak_memory_mib']:>9.0f} | "
              + (f"{flops / 1e12:>6.2f}" if flops else f"{'-':>6}") + " | "
              + (f"{row['step_over_floor']:>7.1f}" if "step_over_floor" in row else f"{'-':>7}"))
    print(f"memory: {rows[0].get('memory_kind', '?') if rows else '?'}; parts are the median step's")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
