"""DCGAN-style generator and critic (docs/design.md, section 1); no normalization in the critic, so the
penalty stays per sample."""

from __future__ import annotations

import math

import torch
from torch import nn


def _num_blocks(image_size: int) -> int:
    n = int(math.log2(image_size)) - 2  # stride-2 blocks between 4x4 and the image
    if image_size < 16 or 4 * 2**n != image_size:
        raise ValueError(f"image_size must be a power of two >= 16, got {image_size}")
    return n


class Generator(nn.Module):
    def __init__(self, z_dim: int = 128, width: int = 64, image_size: int = 64, channels: int = 3):
        super().__init__()
        self.z_dim = z_dim
        n = _num_blocks(image_size)
        chans = [width * 2 ** (n - 1 - i) for i in range(n)]  # 64 px, width 64: 512, 256, 128, 64
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim, chans[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(chans[0]),
            nn.LeakyReLU(0.2),
        ]
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]
        layers += [nn.ConvTranspose2d(chans[-1], channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.z_dim, 1, 1))


class Critic(nn.Module):
    def __init__(self, width: int = 64, image_size: int = 64, channels: int = 3, dropout: float = 0.3):
        super().__init__()
        n = _num_blocks(image_size)
        chans = [width * 2**i for i in range(n)]  # 64 px, width 64: 64, 128, 256, 512
        layers: list[nn.Module] = []
        c_in = channels
        for i, c_out in enumerate(chans):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2)]
            if i > 0 and dropout > 0:
                layers.append(nn.Dropout(dropout))
            c_in = c_out
        layers.append(nn.Conv2d(c_in, 1, 4, 1, 0))  # 4x4 -> 1x1, no sigmoid: a Wasserstein critic
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()  # one score per sample


def build_models(model_cfg) -> tuple[Generator, Critic]:
    g = Generator(model_cfg.z_dim, model_cfg.width, model_cfg.image_size, model_cfg.channels)
    d = Critic(model_cfg.width, model_cfg.image_size, model_cfg.channels, model_cfg.critic_dropout)
    return g, d
