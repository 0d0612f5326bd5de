"""FID: torchmetrics' arithmetic on the feature moments (sum, outer product sum, count) of both sets."""

from __future__ import annotations

import warnings

import torch

from distgan.evaluation.metrics.passthrough import Passthrough


class FID:
    name, needs_network, parts, headline, lower_is_better = "fid", True, ("moments",), "eval/fid", True

    def compute(self, real, fake, options) -> dict[str, float]:
        from torchmetrics.image.fid import FrechetInceptionDistance

        fid = FrechetInceptionDistance(feature=Passthrough(real["feature_sum"].shape[0]), reset_real_features=False,
                                       sync_on_compute=False)
        fid.real_features_sum, fid.real_features_cov_sum = real["feature_sum"], real["feature_outer"]
        fid.real_features_num_samples = real["feature_count"].long()
        fid.fake_features_sum, fid.fake_features_cov_sum = fake["feature_sum"], fake["feature_outer"]
        fid.fake_features_num_samples = fake["feature_count"].long()
        fid.orig_dtype = torch.float64  # set by update() otherwise; the result's dtype
        with warnings.catch_warnings():  # "compute called before update": the states were loaded, not updated
            warnings.simplefilter("ignore", UserWarning)
            return {"eval/fid": float(fid.compute())}
