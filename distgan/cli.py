"""Shared command-line plumbing: argument parsing, config loading, and user errors as one line + exit 2."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, NoReturn

from distgan.config import Config, load_config
from distgan.errors import Diverged, UserError


def fail(message: str, status: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def config_from_args(argv: list[str] | None, prog: str, description: str) -> Config:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help="YAML file (see configs/); keys not in it keep their defaults")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.batch_size=64 run.name=exp1")
    args = parser.parse_intermixed_args(argv)  # options and key=value in any order
    return load_config(args.config, args.overrides)


def run_main(main: Callable[[], int | None]) -> NoReturn:
    """Call main(); a user error exits 2, a diverged run 1, an interrupt 130: each one line, no traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code = main()
    except UserError as exc:
        fail(str(exc))
    except Diverged as exc:
        fail(str(exc), status=1)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside training: the shell's status for it
        fail("interrupted", status=130)
    sys.exit(code or 0)
