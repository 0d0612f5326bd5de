"""distgan COMMAND [ARGS]: train, tune, sample, evaluate, prepare or bench (each also `python -m distgan.MODULE`)."""

from __future__ import annotations

import importlib
import sys

from distgan import __version__

COMMANDS = {"train": "distgan.train", "tune": "distgan.tune", "sample": "distgan.sample",
            "evaluate": "distgan.evaluate", "prepare": "distgan.data.prepare", "bench": "distgan.bench"}
USAGE = f"usage: distgan {{{','.join(COMMANDS)}}} [ARGS]   (distgan COMMAND --help for each)"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(f"{USAGE}\n{__doc__.splitlines()[0]}")
        sys.exit(0 if args else 2)
    if args[0] == "--version":
        print(f"distgan {__version__}")
        sys.exit(0)
    if args[0] not in COMMANDS:
        print(f"error: unknown command {args[0]!r}; {USAGE.removeprefix('usage: ')}", file=sys.stderr)
        sys.exit(2)
    from distgan.cli import run_main

    module = importlib.import_module(COMMANDS[args[0]])
    run_main(lambda: module.main(args[1:]))


if __name__ == "__main__":
    main()
