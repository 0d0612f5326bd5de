"""Improved precision and recall (Kynkaanniemi et al. 2019), k = 3, on the kept features."""

from __future__ import annotations

import torch

K = 3
ROWS = 1024  # distance rows computed at a time: (ROWS, n) floats, not (n, n)


def radii(points: torch.Tensor, k: int = K) -> torch.Tensor:
    """Distance of each point to its k-th nearest other point (the point itself is the 0th)."""
    return torch.cat([torch.cdist(points[i:i + ROWS], points).kthvalue(k + 1, dim=1).values
                      for i in range(0, len(points), ROWS)])


def coverage(queries: torch.Tensor, points: torch.Tensor, point_radii: torch.Tensor) -> float:
    """The share of queries within some point's radius."""
    inside = [(torch.cdist(queries[i:i + ROWS], points) <= point_radii.unsqueeze(0)).any(dim=1)
              for i in range(0, len(queries), ROWS)]
    return float(torch.cat(inside).double().mean())


class PrecisionRecall:
    name, needs_network, parts, headline, lower_is_better = "pr", True, ("features",), "eval/recall", False

    def compute(self, real, fake, options) -> dict[str, float]:
        r, f = real["features"], fake["features"]
        n = min(len(r), len(f))  # equal sets, as the paper compares them
        r, f = r[:n], f[:n]
        return {"eval/precision": coverage(f, r, radii(r)), "eval/recall": coverage(r, f, radii(f))}
