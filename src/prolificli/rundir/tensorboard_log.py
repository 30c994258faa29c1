"""Optional TensorBoard logging (`--tensorboard`, recipe key log.tensorboard): the metrics a stage
already writes to metrics.jsonl and its previews, as TensorBoard events in RUN/STAGE/tb/.

TensorBoard is an optional extra (`pip install 'prolificli[tensorboard]'`); asking for it
without the extra is a ConfigError, raised before any work starts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import ConfigError

INSTALL_HINT = "pip install 'prolificli[tensorboard]'"
TB_DIR = "tb"


def require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401  (torch's SummaryWriter needs the package itself)
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError(f"--tensorboard (log.tensorboard) needs TensorBoard: {INSTALL_HINT}") from None


class TensorBoardLog:
    """One stage's event files. A stage resumed from its checkpoint at `start_step` redoes the
    steps after it, so the writer purges from start_step + 1: TensorBoard drops what the
    interrupted attempt logged past the checkpoint instead of showing those steps twice."""

    def __init__(self, stage_dir: Path, start_step: int = 0):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.directory = Path(stage_dir) / TB_DIR
        self.writer = SummaryWriter(str(self.directory), purge_step=start_step + 1 if start_step else None)

    def scalars(self, step: int, metrics: dict) -> None:
        for key, value in metrics.items():
            value = value.item() if hasattr(value, "item") else value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)

    def image(self, step: int, image: np.ndarray, tag: str = "preview") -> None:
        """image: uint8 [H,W,3], the stage's preview grid."""
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()
