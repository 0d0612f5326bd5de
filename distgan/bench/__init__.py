"""distgan bench: the training step timed against a plain loop (docs/benchmarks.md)."""

from distgan.bench.main import main  # noqa: F401  (distgan bench, and python -m distgan.bench)
