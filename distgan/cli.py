"""Shared command-line plumbing: argument parsing, config loading, and user errors as one line + exit 2."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, NoReturn

from distgan.config import Config, ConfigError, load_config


class UserError(Exception):
    """A mistake the user can fix (bad path, bad value): printed as one line, exit status 2."""


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def config_from_args(argv: list[str] | None, prog: str, description: str) -> Config:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help="YAML file (see configs/); keys not in it keep their defaults")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.batch_size=64 run.name=exp1")
    args = parser.parse_args(argv)
    return load_config(args.config, args.overrides)


def run_main(main: Callable[[], int | None]) -> NoReturn:
    """Call main(); turn user errors into a one-line message and exit 2, with no traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from distgan.data.sources import DataSourceError

    try:
        code = main()
    except (ConfigError, UserError, DataSourceError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted")
    sys.exit(code or 0)
