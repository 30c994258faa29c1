"""Score distillation: each method turns renders x0 into an image-space gradient (a surrogate loss)."""

from .base import Conditioning, DistillerState, DistillOutput, surrogate_loss
from .esd import ESD
from .lookahead import L2VSD, LVSD
from .schedule import TimestepSchedule, weight
from .score_model import ScoreModel
from .sds import SDS
from .vsd import VSD

__all__ = [
    "ESD",
    "L2VSD",
    "LVSD",
    "SDS",
    "VSD",
    "Conditioning",
    "DistillOutput",
    "DistillerState",
    "ScoreModel",
    "TimestepSchedule",
    "surrogate_loss",
    "weight",
]
