"""Score distillation: each method turns renders x0 into an image-space gradient (a surrogate loss)."""

from prolificli.distill.base import Conditioning, DistillOutput, surrogate_loss
from prolificli.distill.l2vsd import L2VSD
from prolificli.distill.schedule import TimestepSchedule, weight
from prolificli.distill.score_model import ScoreModel
from prolificli.distill.sds import SDS
from prolificli.distill.vsd import VSD

__all__ = [
    "L2VSD",
    "SDS",
    "VSD",
    "Conditioning",
    "DistillOutput",
    "ScoreModel",
    "TimestepSchedule",
    "surrogate_loss",
    "weight",
]
