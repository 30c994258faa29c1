"""How much memory the mesh stages' differentiable render holds at each resolution.

Decides whether geometry and texture need deferred back-propagation like the NeRF renderer
(issue 12): one training render of an icosphere (the size of an extracted mesh: --subdivisions 5
gives 20k faces) from a paper-range camera, with the graph, then its backward, per resolution in
its own process. "geometry": normal map of a mesh whose vertices require grad; "texture": the
default recipe's hash-grid albedo (16 levels, 2^19) at the visible surface points, the mesh fixed.
Reports max RSS (CPU) or CUDA max allocated, and seconds. Prints a table; writes
benchmarks/results/mesh_render_memory.json.

    python benchmarks/mesh_render_memory.py --resolutions 128 512
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def measure(stage: str, resolution: int, subdivisions: int, device: str) -> dict:
    import torch
    import trimesh

    from prolificli.cameras import sample_cameras
    from prolificli.config import CameraConfig, MeshRenderConfig, TextureStageConfig
    from prolificli.mesh.mesh import Mesh
    from prolificli.render.mesh import normal_image, render_mesh, surface_colors
    from prolificli.scene.texture import TextureField

    sphere = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.45)
    vertices = torch.tensor(sphere.vertices, dtype=torch.float32, device=device)
    faces = torch.tensor(sphere.faces, dtype=torch.long, device=device)
    cameras = sample_cameras(CameraConfig(), 1, generator=torch.Generator().manual_seed(0)).to(device)
    cuda = device.startswith("cuda")
    tic = time.perf_counter()
    if stage == "geometry":
        vertices.requires_grad_(True)
        out = render_mesh(Mesh(vertices, faces), cameras, resolution, MeshRenderConfig(backend="torch"))
        loss = normal_image(out, cameras).square().mean() + out.opacity.mean()
    else:
        cfg = TextureStageConfig()
        field = TextureField(cfg.grid, cfg.hidden_dim).to(device)
        out = render_mesh(Mesh(vertices, faces), cameras, resolution, MeshRenderConfig(backend="torch"))
        image = out.composite(surface_colors(out, field), torch.ones_like(out.position))
        loss = image.square().mean()
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - tic
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"stage": stage, "resolution": resolution, "faces": int(faces.shape[0]), "seconds": seconds,
            "peak_memory_mib": round(peak, 1), "memory_kind": "cuda max allocated" if cuda else "max RSS"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--subdivisions", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # child: stage resolution
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.subdivisions, args.device)))
        return
    rows = []
    for stage in ("geometry", "texture"):
        for resolution in args.resolutions:
            proc = subprocess.run([sys.executable, __file__, "--one", stage, str(resolution), "--subdivisions",
                                   str(args.subdivisions), "--device", args.device], capture_output=True, text=True)
            if proc.returncode != 0:
                rows.append({"stage": stage, "resolution": resolution, "error": proc.stderr.strip().splitlines()[-1:]})
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{'stage':>9} | {'res':>4} | {'faces':>6} | {'seconds':>7} | {'peak MiB':>8}")
    for row in rows:
        if "error" in row:
            print(f"{row['stage']:>9} | {row['resolution']:>4} | failed: {row['error']}")
            continue
        print(f"{row['stage']:>9} | {row['resolution']:>4} | {row['faces']:>6} | {row['seconds']:>7.2f} | "
              f"{row['peak_memory_mib']:>8.0f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "mesh_render_memory.json"
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
