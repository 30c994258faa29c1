"""Score distillation: each method turns renders x0 into an image-space gradient (a surrogate loss)."""

from prolificli.distill.base import Conditioning, DistillerState, DistillOutput, surrogate_loss
from prolificli.distill.esd import ESD
from prolificli.distill.lookahead import L2VSD, LVSD
from prolificli.distill.schedule import TimestepSchedule, weight
from prolificli.distill.score_model import ScoreModel
from prolificli.distill.sds import SDS
from prolificli.distill.vsd import VSD

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
