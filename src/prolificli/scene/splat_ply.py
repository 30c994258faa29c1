"""Gaussian-splat particles as the 3D Gaussian splatting PLY: the file the INRIA code writes and
SuperSplat / PlayCanvas, Spark, gaussian-splats-3d, gsplat and nerfstudio read.

One binary little-endian PLY per particle, one `vertex` element per Gaussian with these float32
properties, in this order:

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  opacity  scale_0 scale_1 scale_2  rot_0 rot_1 rot_2 rot_3

- x y z: the mean, in our world's coordinates, which are z-up (as our mesh PLYs; the format
  defines no up axis: choose z as up where a viewer lets you);
- nx ny nz: zero (the INRIA files carry them, unused);
- f_dc_*: the degree-0 spherical-harmonic coefficient of each colour channel, (rgb - 0.5) / C0,
  with C0 = 1 / (2 sqrt(pi)); we have no view dependence, so there are no f_rest_*;
- opacity: the logit of the opacity; scale_*: the natural log of the standard deviation along
  each axis; rot_*: the rotation quaternion, w first, normalised.

What a viewer draws is what we draw: the Gaussians are written after the 3D smoothing filter
(`smoothing_3d`, scene/gaussians.py), which viewers do not know.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..files import write_bytes_atomic
from .gaussians import GaussianCloud

SH_C0 = 0.5 / math.sqrt(math.pi)  # Y_0^0: colour = 0.5 + SH_C0 * f_dc
PROPERTIES = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
              "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")


class SplatPlyError(ValueError):
    """A file that is not a splat PLY as this module writes it."""


def splat_ply_bytes(cloud: GaussianCloud, smoothing_3d: float = 0.0) -> bytes:
    """The cloud as a splat PLY (see the module doc)."""
    with torch.no_grad():
        log_scales, opacity_logits = cloud.smoothed(smoothing_3d)
        quaternions = torch.nn.functional.normalize(cloud.quaternions, dim=-1)
        columns = [cloud.means, torch.zeros_like(cloud.means), (cloud.colors() - 0.5) / SH_C0,
                   opacity_logits[:, None], log_scales, quaternions]
        table = torch.cat([c.detach().to("cpu", torch.float64) for c in columns], dim=1).numpy().astype("<f4")
    header = "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {len(table)}",
                        *(f"property float {name}" for name in PROPERTIES), "end_header"]) + "\n"
    return header.encode("ascii") + np.ascontiguousarray(table).tobytes()


def write_splat_ply(path: Path, cloud: GaussianCloud, smoothing_3d: float = 0.0) -> None:
    write_bytes_atomic(path, splat_ply_bytes(cloud, smoothing_3d))


def read_splat_ply(path: Path) -> GaussianCloud:
    """A splat PLY as this module writes it, back as a cloud (smoothing already applied: render it
    with smoothing_3d 0). Files with other properties, or in another order, are refused."""
    data = Path(path).read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise SplatPlyError(f"{path}: not a PLY file")
    lines = data[:end].decode("ascii", errors="replace").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise SplatPlyError(f"{path}: not binary little-endian")
    counts = [int(line.split()[2]) for line in lines if line.startswith("element vertex ")]
    names = [line.split()[2] for line in lines if line.startswith("property float ")]
    if len(counts) != 1 or tuple(names) != PROPERTIES or sum(line.startswith("element ") for line in lines) != 1:
        raise SplatPlyError(f"{path}: expected one vertex element with the properties {' '.join(PROPERTIES)}")
    body = data[end + len(b"end_header\n"):]
    if len(body) != counts[0] * len(PROPERTIES) * 4:
        raise SplatPlyError(f"{path}: {len(body)} bytes of data for {counts[0]} Gaussians")
    table = torch.from_numpy(np.frombuffer(body, dtype="<f4").reshape(counts[0], len(PROPERTIES)).astype(np.float32))
    colors = (0.5 + SH_C0 * table[:, 6:9]).clamp(1e-6, 1 - 1e-6)
    return GaussianCloud(table[:, 0:3].clone(), table[:, 10:13].clone(), table[:, 13:17].clone(), table[:, 9].clone(),
                         torch.log(colors) - torch.log1p(-colors))
