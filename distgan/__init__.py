"""distgan: a distributed WGAN-GP trainer (PyTorch DDP on Ray Train) that generates faces."""

__version__ = "0.1.0"
