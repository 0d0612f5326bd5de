"""KID: torchmetrics' polynomial-kernel MMD on the kept features, over eval.kid_subsets subsets."""

from __future__ import annotations

import warnings

import torch

from distgan.evaluation.metrics.passthrough import Passthrough


class KID:
    name, needs_network, parts, headline, lower_is_better = "kid", True, ("features",), "eval/kid", True

    def compute(self, real, fake, options) -> dict[str, float]:
        from torchmetrics.image.kid import KernelInceptionDistance

        with warnings.catch_warnings():  # "will save all extracted features": that is what it is given
            warnings.simplefilter("ignore", UserWarning)
            kid = KernelInceptionDistance(feature=Passthrough(real["features"].shape[1]),
                                          subsets=options["kid_subsets"], subset_size=options["kid_subset_size"],
                                          reset_real_features=False, sync_on_compute=False)
        kid.update(real["features"].double(), real=True)
        kid.update(fake["features"].double(), real=False)
        with torch.random.fork_rng(devices=[]):  # KID draws its subsets from the global RNG: leave training's alone
            torch.manual_seed(0)
            mean, std = kid.compute()
        return {"eval/kid": float(mean), "eval/kid_std": float(std)}
