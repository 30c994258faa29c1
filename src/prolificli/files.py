"""Writing files so that a crash never leaves half of one: the package's one atomic write, and
images as PNG (from tensors in [0,1] via `to_uint8`). Imports nothing of the package, so every
layer may use it.

An atomic write goes to a temporary file in the same directory, is fsync-ed, renamed over the
target (a reader sees the old file or the complete new one), and the directory is fsync-ed so
the rename itself survives a power cut.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor


def fsync_dir(directory: Path) -> None:
    """Makes a rename durable; best effort, as some filesystems refuse to open or fsync directories."""
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_bytes_atomic(path: Path | str, data: bytes) -> Path:
    """Readers see either the old file or the complete new one, never a partial write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_json_atomic(path: Path | str, obj: Any) -> Path:
    return write_bytes_atomic(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def to_uint8(images: Tensor) -> np.ndarray:
    """[N,H,W,C] in [0,1] -> uint8 [N,H,W,3] (one channel is repeated)."""
    images = images.detach().float().clamp(0, 1).cpu()
    if images.shape[-1] == 1:
        images = images.expand(*images.shape[:-1], 3)
    return (images.numpy() * 255).round().astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 image [H,W,3] (or [H,W]) as PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(image: np.ndarray, path: Path | str) -> Path:
    return write_bytes_atomic(path, png_bytes(image))
