"""Evaluation benchmark: what FID costs, and how far a small sample biases it (docs/evaluation.md).

    .venv/bin/python benchmarks/evaluation.py --cost-images 200 --bias-sizes ""          # CPU: the cost only
    python benchmarks/evaluation.py --device cuda --bias-sizes 250,500,1000,2000,4000     # GPU: both
    .venv/bin/python benchmarks/evaluation.py --cost-images 50 --reference 1000 --bias-sizes 100,250,500,1000  # CPU

cost: seconds per 1,000 generated samples with the standard Inception network, the whole path of an evaluation
(generate with the seed generator at 64 px, quantize, resize to 299, features, statistics), after one warm-up
batch. bias: the demo faces (8,192 at 64 px, generated, nothing downloaded) split in two halves from one
distribution; FID and KID of n images of the second half against the reference statistics of the whole first
half (or its first --reference images). Their true distance is ~0, so what FID shows at n is its small-sample bias
(KID is unbiased).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from distgan.data.demo import ensure_demo_shards  # noqa: E402
from distgan.data.validation import ValidationStream, validation_batches  # noqa: E402
from distgan.engine.distributed import Dist  # noqa: E402
from distgan.evaluation.inception import load_feature_network, to_uint8  # noqa: E402
from distgan.evaluation.statistics import SetStatistics, compute_metrics  # noqa: E402
from distgan.models import Generator  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def cost(network, device: torch.device, images: int, batch: int) -> float:
    """Seconds per 1,000 samples: generate, quantize, extract features, accumulate statistics."""
    G = Generator(128, 64, 64).to(device).eval()
    stats = SetStatistics(["fid"], network.num_features, keep=0, device=device)
    z = torch.randn(batch, 128, device=device)
    stats.add(0, G(z), network(to_uint8(G(z))))  # warm-up (cuDNN autotuning, lazy init)
    sync(device)
    start, done = time.perf_counter(), 0
    while done < images:
        x = G(z)
        stats.add(0, x, network(to_uint8(x)))
        done += batch
    sync(device)
    return (time.perf_counter() - start) / done * 1000


@torch.no_grad()
def set_statistics(network, images: torch.Tensor, device: torch.device, batch: int, keep: int) -> dict:
    stats = SetStatistics(["fid", "kid"], network.num_features, keep=keep, device=device)
    for i in range(0, len(images), batch):
        x = images[i : i + batch].to(device)
        stats.add(i, x, network(to_uint8(x)))
    return stats.gathered(Dist())


def bias(network, device: torch.device, sizes: list[int], batch: int, cache: str, reference_size: int) -> list[dict]:
    root = ensure_demo_shards(cache, 64, 8192)
    stream = ValidationStream.from_source(root, 8192, 64)
    images = next(iter(validation_batches(stream)))[0]
    first, second = images[:reference_size], images[4096:]
    reference = set_statistics(network, first, device, batch, keep=4096)
    rows = []
    for n in sizes:
        fake = set_statistics(network, second[:n], device, batch, keep=n)
        scores = compute_metrics(reference, fake, ["fid", "kid"], kid_subsets=100, kid_subset_size=min(n, 1000))
        rows.append({"n": n, "fid": scores["eval/fid"], "kid": scores["eval/kid"]})
        print(f"reference {reference_size}, n={n:5d}  FID {scores['eval/fid']:.3f}  KID {scores['eval/kid']:.5f}",
              flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cost-images", type=int, default=200)
    p.add_argument("--bias-sizes", default="250,500,1000,2000,4000", help="comma-separated; empty: skip")
    p.add_argument("--reference", type=int, default=4096, help="reference images, from the first half (<= 4096)")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "distgan-bench-eval"))
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if not 2 <= args.reference <= 4096:
        p.error("--reference must be within 2..4096")
    if args.cost_images < 1 or args.batch < 1:
        p.error("--cost-images and --batch must be >= 1")
    try:
        sizes = [int(s) for s in args.bias_sizes.split(",") if s.strip()]
    except ValueError:
        p.error(f"--bias-sizes takes comma-separated numbers, got {args.bias_sizes!r}")
    if any(not 2 <= n <= 4096 for n in sizes):  # generated sets are compared with the data's second half: 4096
        p.error(f"--bias-sizes must each be within 2..4096, got {args.bias_sizes}")
    device = torch.device(args.device)
    network = load_feature_network(device=device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()}"
    seconds = cost(network, device, args.cost_images, args.batch)
    print(f"{name}: {seconds:.1f} s per 1,000 samples (Inception at 299 px, seed generator at 64 px)", flush=True)
    result = {"device": name, "seconds_per_1000": seconds, "reference": args.reference, "bias": []}
    if sizes:
        result["bias"] = bias(network, device, sizes, args.batch, args.cache, args.reference)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
