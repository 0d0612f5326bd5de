"""SWD: the weights-free sliced Wasserstein distance of 16 px copies (distgan/evaluation/swd.py)."""

from __future__ import annotations

from distgan.evaluation.swd import sliced_wasserstein


class SWD:
    name, needs_network, parts, headline, lower_is_better = "swd", False, ("small_images",), "eval/swd", True

    def compute(self, real, fake, options) -> dict[str, float]:
        return {"eval/swd": sliced_wasserstein(real["small_images"], fake["small_images"])}
