"""The training objectives train.objective can name: one file each, registered here by name."""

from __future__ import annotations

from distgan.errors import ConfigError
from distgan.objectives.base import Objective
from distgan.objectives.hinge_r1 import HingeR1
from distgan.objectives.wgan_gp import WGANGP

OBJECTIVES: dict[str, type] = {"wgan-gp": WGANGP, "hinge-r1": HingeR1}


def build_objective(train_cfg) -> Objective:
    if train_cfg.objective not in OBJECTIVES:
        raise ConfigError(f"train.objective: unknown {train_cfg.objective!r} (one of {', '.join(OBJECTIVES)})")
    return OBJECTIVES[train_cfg.objective](train_cfg)
