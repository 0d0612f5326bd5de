import pytest
import torch

from distgan.models import Critic, Generator


@pytest.mark.parametrize("size", [16, 32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(size, channels):
    G = Generator(z_dim=8, width=4, image_size=size, channels=channels)
    D = Critic(width=4, image_size=size, channels=channels)
    x = G(torch.randn(2, 8))
    assert x.shape == (2, channels, size, size)
    assert D(x).shape == (2,)


def test_seed_architecture_at_64px():
    D = Critic(width=64, image_size=64, dropout=0.3)
    convs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 2, 1]
    assert sum(isinstance(m, torch.nn.Dropout) for m in D.modules()) == 3
    assert not any(isinstance(m, torch.nn.modules.batchnorm._NormBase) for m in D.modules())
    G = Generator(z_dim=128, width=64, image_size=64)
    convts = [m for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [c.out_channels for c in convts] == [512, 256, 128, 64, 3]
    assert all(c.bias is None for c in convts[:-1])
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in G.modules()) == 4


def test_no_dropout_when_zero():
    D = Critic(width=4, image_size=32, dropout=0.0)
    assert not any(isinstance(m, torch.nn.Dropout) for m in D.modules())


def test_unsupported_size():
    with pytest.raises(ValueError):
        Generator(image_size=48)
