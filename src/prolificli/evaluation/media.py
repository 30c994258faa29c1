"""Turn rendered frames into files: MP4 (ffmpeg from the imageio-ffmpeg wheel), GIF, PNGs and a
contact sheet with one row each of rgb, normals, depth and opacity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..files import to_uint8, write_bytes_atomic
from .frames import Frames


def depth_colours(frames: Frames) -> Tensor:
    """Depth as grey, near bright and far dark over the hit pixels of all frames; white background."""
    hit = frames.opacity > 0.5
    if not hit.any():
        return torch.ones_like(frames.depth)
    near, far = frames.depth[hit].min(), frames.depth[hit].max()
    grey = 0.9 - 0.8 * (frames.depth - near) / (far - near).clamp(min=1e-6)
    return torch.where(hit, grey, torch.ones_like(grey))


def contact_sheet(frames: Frames, columns: int = 8) -> np.ndarray:
    """uint8 [4H, columns*W, 3]: rows rgb | normal | depth | opacity at `columns` evenly spaced frames."""
    index = torch.linspace(0, len(frames) - 1, min(columns, len(frames))).round().long()
    rows = [frames.rgb[index], frames.normal[index], depth_colours(frames)[index], frames.opacity[index]]
    return np.concatenate([np.concatenate(list(to_uint8(row)), axis=1) for row in rows], axis=0)


def gif_bytes(frames: np.ndarray, fps: int) -> bytes:
    """An endlessly looping GIF of uint8 frames [N,H,W,3]."""
    from io import BytesIO

    images = [Image.fromarray(f) for f in frames]
    buffer = BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return buffer.getvalue()


def write_gif(frames: np.ndarray, path: Path, fps: int) -> Path:
    write_bytes_atomic(path, gif_bytes(frames, fps))
    return path


def write_mp4(frames: np.ndarray, path: Path, fps: int) -> Path:
    """H.264 in yuv420p, which every player opens (odd sizes are padded to even by one pixel)."""
    import imageio_ffmpeg

    if frames.shape[1] % 2 or frames.shape[2] % 2:
        frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)), mode="edge")
    partial = path.with_name(path.name + ".partial.mp4")  # written whole, then moved: never a torn file
    writer = imageio_ffmpeg.write_frames(str(partial), (frames.shape[2], frames.shape[1]), fps=fps, codec="libx264",
                                         pix_fmt_out="yuv420p", macro_block_size=1, quality=8,
                                         ffmpeg_log_level="error")
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    partial.replace(path)
    return path
