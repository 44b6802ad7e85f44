"""``downscale run`` with fault points injected, for tests that interrupt a real process.

Usage (from the repository root)::

    python -m tests.helpers.run_with_faults --pause read:30 -- --checkpoint ... --output ...

``--pause POINT:SECONDS`` (repeatable) sleeps at each occurrence of a named point of
:data:`downscale.batch.execute.POINTS` (e.g. ``computed:0.5`` slows every chunk down),
so that a test can kill the process there. The run itself is
:func:`downscale.batch.cli.main` with :class:`~downscale.batch.execute.Hooks`: users'
``downscale run`` has no such option and reads no environment variable for it.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Sequence

from downscale.batch.cli import main as run_main
from downscale.batch.execute import POINTS, Hooks
from downscale.main import _run_guarded


def sleep_at(pauses: dict[str, float], point: str) -> None:
    """Sleep ``pauses[point]`` seconds (a module function: picklable for Dask workers)."""
    if point in pauses:
        time.sleep(pauses[point])


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``--pause`` options, then run ``downscale run`` with the rest."""
    parser = argparse.ArgumentParser(prog="python -m tests.helpers.run_with_faults")
    parser.add_argument("--pause", action="append", default=[], metavar="POINT:SECONDS")
    parser.add_argument("run_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    pauses = {}
    for spec in args.pause:
        point, _, seconds = spec.partition(":")
        if point not in POINTS:
            parser.error(f"unknown point {point!r}; one of {', '.join(POINTS)}")
        pauses[point] = float(seconds)
    rest = args.run_args[1:] if args.run_args[:1] == ["--"] else args.run_args
    hooks = Hooks(pause=functools.partial(sleep_at, pauses))
    _run_guarded(lambda: run_main(rest, hooks=hooks))


if __name__ == "__main__":
    from downscale.main import _configure_logging

    _configure_logging()
    main(sys.argv[1:])
